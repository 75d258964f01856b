// Per-device debug view for integrators (GET /api/v1/devices/{code}/debug): the last raw
// messages with their decoded readings or reject reason, dead letters with reasons, and the
// device's MQTT session. Opened from the device panel or with the address #debug/<code>.
// Needs devices:debug (admins, integrators). All text goes through textContent.

import { h, clear, $ } from "./dom.js";
import { lang, onLangChange, fmtTime } from "./i18n.js";
import { getJSON, ApiError } from "./api.js";
import { can } from "./access.js";

const TEXT = {
  zh: {
    title: "设备调试",
    open: "调试视图",
    close: "关闭",
    refresh: "刷新",
    loading: "加载中…",
    session: "会话",
    connected: "在线",
    disconnected: "离线",
    no_session: "无 MQTT 会话记录",
    last_seen: "最近收到",
    messages: "最近消息",
    dead: "拒收(死信)",
    none: "无",
    received: "接收时间",
    topic: "主题",
    payload: "原始载荷",
    decoded: "解码结果",
    reason: "原因",
    source: "来源",
    accepted: "已接收",
    withheld: "敏感类设备:载荷不予显示",
    not_found: "无此设备,或不在您的权限范围内",
    forbidden: "需要 devices:debug 权限(管理员、集成商)",
    error: "加载失败:{detail}",
    capturing: "正在记录原始消息,至 {until};此前的消息不在其中",
    not_capturing: "未记录原始消息",
  },
  en: {
    title: "Device debug",
    open: "Debug view",
    close: "Close",
    refresh: "Refresh",
    loading: "Loading…",
    session: "Session",
    connected: "connected",
    disconnected: "disconnected",
    no_session: "No MQTT session recorded",
    last_seen: "Last received",
    messages: "Recent messages",
    dead: "Rejections (dead letters)",
    none: "None",
    received: "Received",
    topic: "Topic",
    payload: "Raw payload",
    decoded: "Decoded",
    reason: "Reason",
    source: "Source",
    accepted: "accepted",
    withheld: "Sensitive class: payload withheld",
    not_found: "No such device, or outside your grants",
    forbidden: "Needs devices:debug (admins, integrators)",
    error: "Could not load: {detail}",
    capturing: "Capturing raw messages until {until}; messages from before the view opened are not kept",
    not_capturing: "Raw messages are not being captured",
  },
};

function tr(key, vars) {
  const text = TEXT[lang()][key] ?? TEXT.en[key] ?? key;
  return vars ? text.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m)) : text;
}

let current = null; // the device code shown
let seq = 0;

function panel() {
  let el = $("#debug");
  if (el) return el;
  el = h(
    "aside",
    { id: "debug", class: "panel debug-panel", "aria-labelledby": "debug-title", hidden: true },
    h(
      "div",
      { class: "panel-head" },
      h("h2", { id: "debug-title" }),
      h("button", { id: "debug-refresh", type: "button", class: "small", onclick: () => current && openDebug(current) }),
      h("button", { id: "debug-close", type: "button", class: "small", onclick: closeDebug }),
    ),
    h("div", { id: "debug-body", class: "debug-body" }),
  );
  document.body.append(el);
  return el;
}

function payloadText(p) {
  if (!p || p.encoding === "withheld") return tr("withheld");
  if (p.encoding === "json") return JSON.stringify(p.data);
  if (p.encoding === "hex") return `hex ${p.data}`;
  return String(p.data ?? "");
}

function readingsText(readings) {
  return (readings ?? []).map((r) => `${r.metric}=${r.value}${r.unit && r.unit !== "1" ? ` ${r.unit}` : ""}${r.quality && r.quality !== "good" ? ` (${r.quality})` : ""}`).join(", ");
}

function table(head, rows, kind) {
  return h(
    "table",
    { class: `debug-table debug-${kind}` },
    h("thead", null, h("tr", null, head.map((x) => h("th", null, x)))),
    h("tbody", null, rows),
  );
}

function render(body, d) {
  clear(body);
  const s = d.session;
  body.append(
    h("h3", null, tr("session")),
    h(
      "p",
      { class: "debug-session", dataset: { connected: s ? String(s.connected) : "" } },
      s ? `${s.connected ? tr("connected") : tr("disconnected")} · ${fmtTime(s.status_at, true)}` : tr("no_session"),
      d.liveness ? ` · ${tr("last_seen")} ${fmtTime(d.liveness.last_seen, true)}` : "",
    ),
  );
  body.append(h("h3", null, tr("dead")));
  if (!d.dead_letters.length) body.append(h("p", { class: "muted debug-dead-empty" }, tr("none")));
  else
    body.append(
      table(
        [tr("received"), tr("reason"), tr("source"), tr("payload")],
        d.dead_letters.map((x) =>
          h(
            "tr",
            { class: "debug-dead", dataset: { reason: x.reason } },
            h("td", { class: "nowrap" }, fmtTime(x.received_at, true)),
            h("td", null, h("strong", { class: "reject" }, x.reason), x.detail ? h("div", { class: "muted" }, x.detail) : null),
            h("td", null, x.source),
            h("td", { class: "mono" }, h("div", { class: "payload" }, payloadText(x.payload))),
          ),
        ),
        "dead",
      ),
    );
  body.append(h("h3", null, tr("messages")));
  const until = d.capture?.until;
  body.append(h("p", { class: "muted debug-capture" }, until ? tr("capturing", { until: fmtTime(until, true) }) : tr("not_capturing")));
  if (!d.messages.length) body.append(h("p", { class: "muted" }, tr("none")));
  else
    body.append(
      table(
        [tr("received"), tr("topic"), tr("payload"), tr("decoded")],
        d.messages.map((m) =>
          h(
            "tr",
            { class: m.rejected ? "debug-msg rejected" : "debug-msg", dataset: { reason: m.rejected?.reason ?? "" } },
            h("td", { class: "nowrap" }, fmtTime(m.received_at, true)),
            h("td", { class: "mono" }, m.topic),
            h("td", { class: "mono" }, h("div", { class: "payload" }, payloadText(m.payload))),
            h("td", null, m.rejected ? h("span", { class: "reject" }, `${m.rejected.reason}: ${m.rejected.detail ?? ""}`) : readingsText(m.readings) || tr("accepted")),
          ),
        ),
        "messages",
      ),
    );
}

function relabel() {
  const el = panel();
  $("#debug-title", el).textContent = `${tr("title")}${current ? ` · ${current}` : ""}`;
  $("#debug-refresh", el).textContent = tr("refresh");
  $("#debug-close", el).textContent = tr("close");
}

/** Open the debug view of a device (and load it). */
export async function openDebug(code) {
  const my = ++seq;
  current = code;
  const el = panel();
  el.hidden = false;
  el.dataset.code = code;
  relabel();
  const body = $("#debug-body", el);
  if (!body.firstChild) body.append(h("p", { class: "muted" }, tr("loading")));
  try {
    const d = await getJSON(`/api/v1/devices/${encodeURIComponent(code)}/debug`);
    if (my !== seq) return;
    render(body, d);
    el.dataset.loaded = String(Date.now());
  } catch (err) {
    if (my !== seq) return;
    clear(body);
    const status = err instanceof ApiError ? err.status : 0;
    body.append(h("p", { class: "error" }, status === 404 ? tr("not_found") : status === 403 ? tr("forbidden") : tr("error", { detail: String(err.detail ?? err) })));
  }
}

export function closeDebug() {
  current = null;
  seq++;
  panel().hidden = true;
  if (location.hash.startsWith("#debug/")) history.replaceState(null, "", location.pathname + location.search);
}

/** A button for the device panel (only for those who may use it). */
export function debugButton(code) {
  if (!can("devices:debug")) return null;
  return h("section", { class: "detail-section" }, h("button", { type: "button", class: "small debug-open", onclick: () => openDebug(code) }, tr("open")));
}

function fromHash() {
  const m = /^#debug\/([0-9A-Za-z]{1,32})$/.exec(location.hash);
  if (m) openDebug(m[1]);
}

/** Start: follow #debug/<code> addresses and language changes. */
export function initDebug() {
  window.addEventListener("hashchange", fromHash);
  onLangChange(() => {
    if (current) {
      relabel();
      openDebug(current);
    }
  });
  fromHash();
}
