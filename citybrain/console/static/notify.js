// Notification subscriptions: outbound webhooks (WeCom / DingTalk robots, SMS gateways) per
// rule pattern, minimum severity and districts, with their delivery log. A toolbar button
// opens the panel (also the address #notifications). Reading needs notifications:read,
// changing notifications:write. The secret is write-only: the API never shows it back.

import { h, clear, $ } from "./dom.js";
import { lang, onLangChange, fmtTime } from "./i18n.js";
import { getJSON, postJSON, deleteJSON, ApiError } from "./api.js";
import { can } from "./access.js";

const FORMATS = ["wecom_markdown", "wecom_text", "dingtalk_markdown", "dingtalk_text", "json"];
const SEVERITIES = ["info", "warning", "major", "critical"];

const TEXT = {
  zh: {
    button: "通知订阅",
    title: "通知订阅",
    close: "关闭",
    none: "暂无订阅",
    name: "名称",
    url: "目标地址",
    format: "格式",
    rule: "规则(通配)",
    severity: "最低级别",
    districts: "区县代码(逗号分隔,空 = 全部)",
    secret: "签名密钥",
    template: "正文模板($rule $severity $device $message $local_time …)",
    create: "新增订阅",
    delete: "删除",
    deliveries: "投递记录",
    no_deliveries: "暂无投递",
    created: "已创建订阅 {name}",
    error: "操作失败:{detail}",
    read_only: "只读:修改需要 notifications:write 权限",
    "format.wecom_markdown": "企业微信 markdown",
    "format.wecom_text": "企业微信 文本",
    "format.dingtalk_markdown": "钉钉 markdown",
    "format.dingtalk_text": "钉钉 文本",
    "format.json": "JSON(短信网关等)",
    "status.pending": "待投递",
    "status.delivered": "已送达",
    "status.failed": "失败",
    attempts: "{n} 次尝试",
  },
  en: {
    button: "Notifications",
    title: "Notification subscriptions",
    close: "Close",
    none: "No subscriptions",
    name: "Name",
    url: "Target URL",
    format: "Format",
    rule: "Rule (glob)",
    severity: "Minimum severity",
    districts: "District codes (comma-separated, empty = all)",
    secret: "Signing secret",
    template: "Body template ($rule $severity $device $message $local_time …)",
    create: "Add subscription",
    delete: "Delete",
    deliveries: "Deliveries",
    no_deliveries: "No deliveries yet",
    created: "Subscription {name} created",
    error: "Failed: {detail}",
    read_only: "Read-only: changes need notifications:write",
    "format.wecom_markdown": "WeCom markdown",
    "format.wecom_text": "WeCom text",
    "format.dingtalk_markdown": "DingTalk markdown",
    "format.dingtalk_text": "DingTalk text",
    "format.json": "JSON (SMS gateway, other)",
    "status.pending": "pending",
    "status.delivered": "delivered",
    "status.failed": "failed",
    attempts: "{n} attempt(s)",
  },
};

function tr(key, vars) {
  const text = TEXT[lang()][key] ?? TEXT.en[key] ?? key;
  return vars ? text.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m)) : text;
}

const BASE = "/api/v1/notifications/subscriptions";

function panel() {
  let el = $("#notify");
  if (el) return el;
  el = h(
    "aside",
    { id: "notify", class: "panel notify-panel", "aria-labelledby": "notify-title", hidden: true },
    h(
      "div",
      { class: "panel-head" },
      h("h2", { id: "notify-title" }),
      h("button", { id: "notify-close", type: "button", class: "small", onclick: closeNotifications }),
    ),
    h("div", { id: "notify-body", class: "notify-body" }),
  );
  document.body.append(el);
  return el;
}

function field(label, input) {
  return h("label", { class: "notify-field" }, h("span", null, label), input);
}

function form(onDone) {
  const f = h(
    "form",
    { id: "notify-form", class: "notify-form" },
    field(tr("name"), h("input", { name: "name", required: true, maxlength: 100 })),
    field(tr("url"), h("input", { name: "url", type: "url", required: true, placeholder: "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…" })),
    field(tr("format"), h("select", { name: "format" }, FORMATS.map((x) => h("option", { value: x }, tr(`format.${x}`))))),
    field(tr("rule"), h("input", { name: "rule_pattern", value: "*" })),
    field(tr("severity"), h("select", { name: "min_severity" }, SEVERITIES.map((x) => h("option", { value: x, selected: x === "warning" }, x)))),
    field(tr("districts"), h("input", { name: "districts", placeholder: "350203,350206" })),
    field(tr("secret"), h("input", { name: "secret", type: "password", autocomplete: "off" })),
    field(tr("template"), h("textarea", { name: "template", rows: 2 })),
    h("p", { class: "error", role: "alert", hidden: true }),
    h("button", { type: "submit" }, tr("create")),
  );
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(f).entries());
    data.districts = String(data.districts || "").split(/[\s,,]+/).filter(Boolean);
    const err = $(".error", f);
    err.hidden = true;
    try {
      await postJSON(BASE, data);
      f.reset();
      onDone();
    } catch (e) {
      err.textContent = tr("error", { detail: e instanceof ApiError ? e.detail : String(e) });
      err.hidden = false;
    }
  });
  return f;
}

async function deliveriesOf(sub, ul) {
  clear(ul);
  try {
    const log = await getJSON(`${BASE}/${sub.id}/deliveries?limit=10`);
    if (!log.length) ul.append(h("li", { class: "muted" }, tr("no_deliveries")));
    for (const d of log)
      ul.append(
        h(
          "li",
          { class: `delivery status-${d.status}`, dataset: { status: d.status, alert: d.alert_id } },
          h("span", { class: "pill" }, tr(`status.${d.status}`)),
          ` ${d.transition} · ${d.severity} · ${fmtTime(d.created_at, true)} · ${tr("attempts", { n: d.attempts })}`,
          d.last_error ? h("div", { class: "muted" }, d.last_error) : null,
        ),
      );
  } catch (e) {
    ul.append(h("li", { class: "error" }, tr("error", { detail: String(e.detail ?? e) })));
  }
}

async function load() {
  const body = $("#notify-body", panel());
  clear(body);
  const writable = can("notifications:write");
  let subs = [];
  try {
    subs = await getJSON(BASE);
  } catch (e) {
    body.append(h("p", { class: "error" }, tr("error", { detail: String(e.detail ?? e) })));
    return;
  }
  const list = h("ul", { id: "notify-list", class: "notify-list" });
  if (!subs.length) list.append(h("li", { class: "muted" }, tr("none")));
  for (const sub of subs) {
    const ul = h("ul", { class: "deliveries" });
    list.append(
      h(
        "li",
        { class: "notify-sub", dataset: { id: String(sub.id) } },
        h("strong", null, sub.name),
        ` · ${tr(`format.${sub.format}`)} · ${sub.rule_pattern} · ≥${sub.min_severity}`,
        sub.districts.length ? ` · ${sub.districts.join(",")}` : "",
        sub.enabled ? "" : " · off",
        h("div", { class: "mono muted" }, sub.url),
        writable
          ? h("button", {
              type: "button",
              class: "small secondary",
              onclick: async () => {
                await deleteJSON(`${BASE}/${sub.id}`).catch(() => null);
                load();
              },
            }, tr("delete"))
          : null,
        h("h4", null, tr("deliveries")),
        ul,
      ),
    );
    deliveriesOf(sub, ul);
  }
  body.append(list);
  if (writable) body.append(form(load));
  else body.append(h("p", { class: "perm-note" }, tr("read_only")));
}

function relabel() {
  const el = panel();
  $("#notify-title", el).textContent = tr("title");
  $("#notify-close", el).textContent = tr("close");
  const b = $("#notify-toggle");
  if (b) b.textContent = tr("button");
}

export function openNotifications() {
  panel().hidden = false;
  relabel();
  load();
}

export function closeNotifications() {
  panel().hidden = true;
  if (location.hash === "#notifications") history.replaceState(null, "", location.pathname + location.search);
}

/** Start: a toolbar button for those who may read subscriptions, and the #notifications address. */
export function initNotifications() {
  if (!can("notifications:read") || $("#notify-toggle")) return;
  const toolbar = $(".toolbar");
  const button = h("button", { id: "notify-toggle", type: "button", class: "toggle", onclick: openNotifications });
  toolbar?.insertBefore(button, $("#lang-toggle"));
  relabel();
  onLangChange(() => {
    relabel();
    if (!panel().hidden) load();
  });
  const follow = () => location.hash === "#notifications" && openNotifications();
  window.addEventListener("hashchange", follow);
  follow();
}
