// Operations console: vital signs, city map, live alert feed, district incidents, device detail.
// Plain ES modules, no build step, same-origin API only. All text goes through textContent.

import { h, clear, $ } from "./dom.js";
import { t, pick, lang, setLang, onLangChange, applyStatic, fmtTime } from "./i18n.js";
import { getJSON, postJSON, deleteJSON, qs, items, ApiError, setCsrfToken } from "./api.js";
import { setPrincipal, getPrincipal, can, deny, grantedDistricts, grantedClasses, scoped, districtVisible } from "./access.js";
import { createMap, shadeLegend, STATUS_COLOURS, SOURCE_COLOURS, aqiColour, aqiLevel } from "./map.js";
import { lineChart } from "./chart.js";
import { debugButton, initDebug } from "./debug.js";
import { initNotifications } from "./notify.js";

const SEVERITIES = ["info", "warning", "major", "critical"];
const VITALS_EVERY_MS = 10_000;
const MAP_EVERY_MS = 30_000;
const MAX_FEED = 300;
const DAY_MS = 24 * 3600 * 1000;
const BUCKET_MS = 5 * 60 * 1000;
const FALLBACK_DISTRICTS = {
  350203: { zh: "思明区", en: "Siming" },
  350205: { zh: "海沧区", en: "Haicang" },
  350206: { zh: "湖里区", en: "Huli" },
  350211: { zh: "集美区", en: "Jimei" },
  350212: { zh: "同安区", en: "Tong'an" },
  350213: { zh: "翔安区", en: "Xiang'an" },
};

const state = {
  actor: "console",
  alerts: new Map(), // id → normalised alert
  rows: new Map(), // id → <li>
  districtNames: { ...FALLBACK_DISTRICTS },
  classes: new Set(["air", "water", "noise", "manhole", "pole", "wastewater", "fluegas"]),
  showSources: false,
  sourceDistricts: [],
  models: new Map(), // "id@version" and "id" → model JSON
  devices: new Map(), // code → geo device properties
  incidents: [],
  vitals: null,
  vitalsError: null,
  districtProps: new Map(), // district code → properties from /api/v1/geo/districts (within the grants)
  sound: false,
  audio: null,
  beeps: 0,
  detailCode: null,
  detailSeq: 0,
  connected: false,
  everConnected: false,
  map: null,
  source: null,
};

window.citybrainConsole = state; // for debugging from DevTools (and the end-to-end tests)
Object.defineProperty(state, "principal", { get: getPrincipal, enumerable: true });

// --- helpers --------------------------------------------------------------------------------------

function districtName(code) {
  const n = state.districtNames[code];
  return n ? n[lang()] || n.en || code : code || t("common.none");
}

function className(cls) {
  const key = `class.${cls}`;
  const text = t(key);
  return text === key ? cls || t("common.none") : text;
}

function sevRank(sev) {
  const i = SEVERITIES.indexOf(sev);
  return i < 0 ? 0 : i;
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

function warn(what, err) {
  // Expected, recoverable failures (an endpoint not deployed yet, a network blip): a warning, not an error.
  console.warn(`citybrain console: ${what}:`, err instanceof ApiError ? `${err.status} ${err.detail}` : err);
}

function textColourOn(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#111" : "#fff";
}

const UNIT_DISPLAY = { "ug/m3": "µg/m³", "mg/m3": "mg/m³", degC: "°C", degF: "°F", deg: "°", "1": "" };

function unitText(u) {
  return u == null ? "" : UNIT_DISPLAY[u] ?? u;
}

function chip(label, colour, extraClass = "") {
  const el = h("span", { class: `chip ${extraClass}`.trim() }, label);
  el.style.background = colour;
  el.style.color = textColourOn(colour);
  return el;
}

// --- session (login hook) ------------------------------------------------------------------------

async function checkSession() {
  // GET /api/v1/session: 200 → signed in, 401 → login form, 404 → authentication not deployed yet.
  try {
    const s = await getJSON("/api/v1/session");
    if (s?.csrf_token) setCsrfToken(s.csrf_token);
    const p = setPrincipal(s);
    if (p) state.actor = p.user;
    renderWhoami();
    return "ok";
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return "login";
    if (err instanceof ApiError && err.status === 404) return "none";
    warn("session check failed; continuing without login", err);
    return "none";
  }
}

function showLogin() {
  $("#app").hidden = true;
  $("#login-view").hidden = false;
  const form = $("#login-form");
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const errEl = $("#login-error");
    errEl.hidden = true;
    try {
      const login = await postJSON("/api/v1/session", { username: data.get("username"), password: data.get("password") });
      if (login?.csrf_token) setCsrfToken(login.csrf_token);
      $("#login-view").hidden = true;
      const status = await checkSession();
      if (status === "login") throw new ApiError(401, t("login.failed"), "/api/v1/session");
      startApp();
    } catch (err) {
      errEl.textContent = `${t("login.failed")}: ${err instanceof ApiError ? err.detail : err}`;
      errEl.hidden = false;
      $("#login-view").hidden = false;
    }
  };
  form.querySelector("input")?.focus();
}

function joinNames(names) {
  return names.join(lang() === "zh" ? "、" : ", ");
}

/** The principal's view of the city: granted districts (and classes), or all districts. */
function scopeText() {
  const districts = grantedDistricts();
  const classes = grantedClasses();
  const parts = [districts.length ? joinNames(districts.map(districtName)) : t("who.all")];
  if (classes.length) parts.push(joinNames(classes.map(className)));
  return parts.join(" · ");
}

function roleName(role) {
  const key = `role.${role}`;
  const text = t(key);
  return text === key ? role : text;
}

/** "duty2 · operator · Siming" in the header: who is signed in and what they see. */
function renderWhoami() {
  const el = $("#whoami");
  const p = getPrincipal();
  $("#logout").hidden = !p;
  if (!p) {
    el.textContent = "";
    el.dataset.scope = "";
    return;
  }
  const parts = [p.user];
  if (p.roles.length) parts.push(joinNames(p.roles.map(roleName)));
  parts.push(scopeText());
  el.textContent = parts.join(" · ");
  el.dataset.scope = p.districts.length ? p.districts.join(",") : "all";
  el.title = t("who.title", { user: p.user, scope: scopeText() });
}

async function logout() {
  try {
    await deleteJSON("/api/v1/session");
  } catch (err) {
    warn("sign-out failed", err);
  }
  // A fresh page: no data of the previous user stays in memory.
  window.location.reload();
}

/** Show or hide the notes that say what this role may not do. */
function renderPermissionNotes() {
  $("#feed-readonly").hidden = can("alerts:act");
}

// --- vital signs ---------------------------------------------------------------------------------

async function refreshVitals() {
  try {
    state.vitals = await getJSON("/api/v1/vitals");
    state.vitalsError = null;
    // Header and map show the same area AQI (one server function): when the header's
    // district AQIs moved, redraw the map's districts now instead of at their next poll.
    const onMap = Object.fromEntries([...state.districtProps].map(([code, p]) => [code, p.aqi ?? null]));
    const inHeader = state.vitals?.aqi?.districts ?? {};
    if (state.map && Object.entries(onMap).some(([code, val]) => code in inHeader && inHeader[code] !== val)) refreshDistricts();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin();
    state.vitalsError = err;
    warn("vitals unavailable", err);
  }
  renderVitals();
}
const refreshVitalsSoon = debounce(refreshVitals, 1500);

function tile(key, value, ...extra) {
  return h(
    "div",
    { class: "tile", dataset: { vital: key } },
    h("span", { class: "tile-label" }, t(`vitals.${key}`)),
    h("span", { class: "tile-value" }, value),
    ...extra,
  );
}

function fmtCount(v) {
  return v == null || !Number.isFinite(Number(v)) ? t("common.none") : String(v);
}

/** Mark a tile as figured over the granted districts or city-wide (shown only to a scoped principal). */
function scopeMark(el, granted) {
  el.dataset.scope = granted ? "granted" : "city";
  if (scoped()) el.append(h("span", { class: "tile-scope" }, granted ? scopeText() : t("who.city_wide")));
  return el;
}

/** Liveness of an alerting device (the map's status says "alerting" first), as geo/status.py classifies it. */
function liveness(d) {
  const model = state.models.get(d.model) ?? state.models.get(String(d.model).split("@")[0]);
  const cadence = Number(model?.cadence_s);
  const seen = Date.parse(d.last_seen ?? "");
  if (!(cadence > 0) || Number.isNaN(seen)) return "unknown";
  const age = (Date.now() - seen) / 1000;
  return age <= 2 * cadence ? "fresh" : age <= 10 * cadence ? "stale" : "offline";
}

/**
 * Figures over the granted districts, from data the API already scopes: the map's devices and
 * districts, and the feed's alerts. /api/v1/vitals is city-wide for every caller.
 */
function scopedFigures() {
  const devices = { online: 0, stale: 0, offline: 0, total: 0 };
  for (const d of state.devices.values()) {
    const status = d.status === "alerting" ? liveness(d) : d.status;
    if (status === "fresh") devices.online++;
    else if (status === "stale") devices.stale++;
    else if (status === "offline") devices.offline++;
  }
  let registered = 0;
  const shares = [];
  for (const [code, p] of state.districtProps) {
    if (!districtVisible(code)) continue;
    registered += Number(p.devices ?? 0);
    if (p.water_ok_share != null) shares.push(Number(p.water_ok_share));
  }
  devices.total = Math.max(registered, state.devices.size);
  const bySev = {};
  let manhole = 0;
  for (const a of state.alerts.values()) {
    // Shelved alerts stay in the feed (marked) but do not count, as in /api/v1/vitals.
    if (a.state === "resolved" || isShelved(a)) continue;
    bySev[a.severity] = (bySev[a.severity] ?? 0) + 1;
    if (a.cls === "manhole") manhole++;
  }
  const water = shares.length ? shares.reduce((x, y) => x + y, 0) / shares.length : null;
  return { devices, bySev, manhole, water };
}

function renderVitals() {
  const root = $("#vitals");
  clear(root);
  const v = state.vitals;
  if (!v) {
    root.append(h("span", { class: "muted" }, state.vitalsError ? t("vitals.unavailable") : t("detail.loading")));
    return;
  }
  root.dataset.generated = v.generated_at ?? "";
  const mine = scoped() ? scopedFigures() : null;
  const aqi = v.aqi?.city;
  const aqiChip = chip(fmtCount(aqi), aqiColour(aqi), "aqi-city");
  const districts = h("div", { class: "aqi-districts" });
  for (const [code, val] of Object.entries(v.aqi?.districts ?? {})) {
    if (!districtVisible(code)) continue; // a scoped officer sees the city headline and their own districts
    const c = chip(`${districtName(code)} ${fmtCount(val)}`, aqiColour(val), "aqi-district");
    c.dataset.district = code;
    c.title = `${districtName(code)} AQI ${fmtCount(val)} (L${aqiLevel(val) ?? "-"})`;
    districts.append(c);
  }
  aqiChip.title = t("vitals.aqi_rule", { n: fmtCount(v.aqi?.stations) });
  const aqiTile = h("div", { class: "tile tile-aqi", dataset: { vital: "aqi" } }, h("span", { class: "tile-label" }, t("vitals.aqi")), aqiChip, districts);

  const share = mine ? mine.water : v.water?.ok_share;
  const water = share == null ? t("common.none") : `${Math.round(Number(share) * 100)}%`;
  const stations = mine ? null : v.water?.stations;

  const dev = mine ? mine.devices : (v.devices ?? {});
  const devVal = h(
    "span",
    { class: "dev-counts" },
    h("span", { class: "dot-label", dataset: { status: "fresh" } }, `${fmtCount(dev.online)} ${t("vitals.online")}`),
    h("span", { class: "dot-label", dataset: { status: "stale" } }, `${fmtCount(dev.stale)} ${t("vitals.stale")}`),
    h("span", { class: "dot-label", dataset: { status: "offline" } }, `${fmtCount(dev.offline)} ${t("vitals.offline")}`),
  );

  const bySev = mine ? mine.bySev : (v.alerts?.open_by_severity ?? {});
  const sevChips = h("span", { class: "sev-counts" });
  for (const sev of [...SEVERITIES].reverse()) {
    const n = Number(bySev[sev] ?? 0);
    sevChips.append(h("span", { class: `sev-count sev-${sev}${n ? "" : " zero"}`, title: t(`severity.${sev}`), dataset: { severity: sev, n: String(n) } }, `${t(`severity.${sev}`)} ${n}`));
  }

  root.append(
    scopeMark(aqiTile, false),
    scopeMark(tile("water", water, stations != null ? h("span", { class: "tile-sub" }, `n=${stations}`) : null), !!mine),
    scopeMark(tile("noise", fmtCount(v.noise?.exceedances_today)), false),
    scopeMark(tile("manhole", fmtCount(mine ? mine.manhole : v.manhole?.open_alerts)), !!mine),
    scopeMark(tile("devices", devVal, h("span", { class: "tile-sub" }, `Σ ${fmtCount(dev.total)}`)), !!mine),
    scopeMark(tile("ingest", `${fmtCount(v.ingest?.messages_last_minute)}${t("vitals.per_min")}`), false),
    scopeMark(tile("alerts", sevChips), !!mine),
  );
}

// --- map -----------------------------------------------------------------------------------------

async function refreshDistricts() {
  try {
    const fc = await getJSON("/api/v1/geo/districts");
    // Only the districts within the caller's grants come back: a scoped officer's map is their districts.
    state.districtProps = new Map();
    for (const f of fc?.features ?? []) {
      const p = f.properties ?? {};
      if (p.code) {
        state.districtProps.set(p.code, p);
        state.districtNames[p.code] = {
          zh: p.name_zh || FALLBACK_DISTRICTS[p.code]?.zh || p.code,
          en: (p.name_en || FALLBACK_DISTRICTS[p.code]?.en || p.code).replace(/ District$/, ""),
        };
      }
    }
    state.map.setDistricts(fc);
    fillDistrictFilter();
    renderWhoami();
    if (scoped()) renderVitals();
    $("#map").dataset.districts = String(fc?.features?.length ?? 0);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin();
    warn("districts unavailable", err);
    showMapMsg(t("map.unavailable"));
  }
}

async function refreshDevices() {
  try {
    const fc = await getJSON("/api/v1/geo/devices");
    const feats = Array.isArray(fc?.features) ? fc.features : [];
    state.devices = new Map(feats.filter((f) => f.properties?.code).map((f) => [f.properties.code, f.properties]));
    for (const f of feats) if (f.properties?.class) state.classes.add(f.properties.class);
    state.map.setDevices(fc);
    state.map.setAlerting(alertingDevices());
    $("#map").dataset.devices = String(feats.length);
    showMapMsg(feats.length ? "" : t("map.no_devices"));
    fillClassFilter();
    if (scoped()) renderVitals();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin();
    warn("devices unavailable", err);
  }
}
const refreshMapSoon = debounce(() => {
  refreshDistricts();
  refreshDevices();
}, 2000);

let gridLoaded = false;
async function toggleGrid(on) {
  if (on && !gridLoaded) {
    try {
      // A scoped officer gets the cells of their districts only (the map frames those).
      const wanted = scoped() ? grantedDistricts().map((d) => `/api/v1/geo/grid${qs({ district: d })}`) : ["/api/v1/geo/grid"];
      const parts = await Promise.all(wanted.map((url) => getJSON(url)));
      state.map.setGrid({ type: "FeatureCollection", features: parts.flatMap((fc) => fc?.features ?? []) });
      gridLoaded = true;
    } catch (err) {
      warn("grid unavailable", err);
    }
  }
  state.map.showGrid(on);
}

// --- pollution sources (GET /api/v1/sources): a map layer and a per-district view -------------------

async function refreshSources() {
  if (!state.showSources) return;
  try {
    const body = await getJSON("/api/v1/sources");
    state.map.setSources(body?.items ?? []);
    state.sourceDistricts = body?.districts ?? [];
    $("#map").dataset.sources = String(body?.items?.length ?? 0);
    renderSourcesView();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin();
    warn("sources unavailable", err);
    showMapMsg(t("sources.unavailable"));
  }
}

function renderSourcesView() {
  const body = $("#sources-table tbody");
  clear(body);
  for (const d of state.sourceDistricts ?? []) {
    const row = h(
      "tr",
      { class: d.alerting ? "alerting" : "", dataset: { district: d.district } },
      h("td", {}, districtName(d.district)),
      h("td", {}, String(d.sources)),
      h("td", {}, String(d.with_permit)),
      h("td", {}, String(d.alerting)),
      h("td", {}, String(d.over_cap)),
    );
    body.append(row);
  }
}

async function toggleSources(on) {
  state.showSources = on;
  $("#sources-view").hidden = !on;
  state.map.showSources(on);
  renderLegend();
  if (on) await refreshSources();
}

function showMapMsg(text) {
  const el = $("#map-msg");
  el.textContent = text;
  el.hidden = !text;
}

/** Devices the map paints "alerting": a shelved alert was silenced and does not (as /api/v1/geo/devices). */
function alertingDevices() {
  const codes = [];
  for (const a of state.alerts.values()) if (a.state !== "resolved" && !a.cleared_at && !isShelved(a)) codes.push(a.device);
  return codes;
}

function renderLegend() {
  const root = $("#legend");
  clear(root);
  const status = h("div", { class: "legend-group" }, h("span", { class: "legend-title" }, t("map.legend")));
  for (const [key, colour] of Object.entries(STATUS_COLOURS)) {
    const sw = h("span", { class: "swatch round" });
    sw.style.background = colour;
    status.append(h("span", { class: "legend-item", dataset: { status: key } }, sw, t(`status.${key}`)));
  }
  const shade = h("div", { class: "legend-group" }, h("span", { class: "legend-title" }, t(`map.shade.${state.map.shade}`)));
  for (const { colour, label } of shadeLegend(state.map.shade)) {
    const sw = h("span", { class: "swatch" });
    sw.style.background = colour;
    shade.append(h("span", { class: "legend-item" }, sw, label));
  }
  root.append(status, shade);
  if (state.showSources) {
    const sources = h("div", { class: "legend-group" }, h("span", { class: "legend-title" }, t("map.sources")));
    for (const [key, colour] of Object.entries(SOURCE_COLOURS)) {
      const sw = h("span", { class: "swatch" });
      sw.style.background = colour;
      sources.append(h("span", { class: "legend-item", dataset: { source: key } }, sw, t(`sources.status.${key}`)));
    }
    root.append(sources);
  }
}

// --- alerts feed ---------------------------------------------------------------------------------

function normalise(raw, kind) {
  const prev = state.alerts.get(raw.id) ?? {};
  const a = { ...prev };
  for (const [k, v] of Object.entries(raw)) if (v !== undefined) a[k] = v;
  a.device = raw.device ?? raw.device_code ?? prev.device;
  a.cls = raw.class ?? raw.device_class ?? prev.cls;
  if (kind) {
    a.last_kind = kind;
    a.last_actor = raw.actor ?? null;
    a.last_comment = raw.comment ?? null;
    a.seen_at = new Date().toISOString();
  }
  if (kind === "comment" && raw.comment) a.comments = [...(prev.comments ?? []), { actor: raw.actor, comment: raw.comment }].slice(-3);
  return a;
}

/** Shelved now: the server clears an expired shelving on its next read; the console does not wait for it. */
function isShelved(a) {
  return !!a.shelved_until && Date.parse(a.shelved_until) > Date.now() && a.state !== "resolved";
}

function visible(a) {
  const sev = $("#f-severity").value;
  const district = $("#f-district").value;
  const cls = $("#f-class").value;
  const show = $("#f-state").value;
  if (sev && sevRank(a.severity) < sevRank(sev)) return false;
  if (district && a.district !== district) return false;
  if (cls && a.cls !== cls) return false;
  if (show === "active" && (a.state === "resolved" || isShelved(a))) return false;
  if (show === "shelved" && !isShelved(a)) return false;
  return true;
}

function byTime(x, y) {
  return String(y.opened_at ?? "").localeCompare(String(x.opened_at ?? "")) || String(y.id).localeCompare(String(x.id));
}

/** The feed's order: by severity (critical first; the default) or by time, newest first. Resolved ones last. */
function sortedAlerts(order = $("#f-sort")?.value ?? "severity") {
  const list = [...state.alerts.values()];
  const done = (a) => (a.state === "resolved" ? 1 : 0);
  if (order === "time") list.sort(byTime);
  else list.sort((x, y) => done(x) - done(y) || sevRank(y.severity) - sevRank(x.severity) || byTime(x, y));
  return list;
}

/** The alert's text in the console's language (rendered by the server from templates), or its raw message. */
function alertText(a) {
  const tx = a.texts?.[lang() === "zh" ? "zh-CN" : "en"];
  return { title: tx?.title ?? a.rule ?? "", text: tx?.text ?? a.message ?? a.rule ?? "" };
}

function trimAlerts() {
  if (state.alerts.size <= MAX_FEED) return;
  // Drop the oldest resolved first, then the oldest.
  const list = sortedAlerts("time");
  for (let i = list.length - 1; i >= 0 && state.alerts.size > MAX_FEED; i--) {
    if (list[i].state === "resolved") state.alerts.delete(list[i].id);
  }
  for (let i = list.length - 1; i >= 0 && state.alerts.size > MAX_FEED; i--) state.alerts.delete(list[i].id);
}

async function act(a, action, comment, li) {
  const err = li.querySelector(".alert-error");
  err.hidden = true;
  try {
    const body = typeof comment === "object" && comment !== null ? comment : { actor: state.actor, comment: comment ?? "" };
    const updated = await postJSON(`/api/v1/alerts/${encodeURIComponent(a.id)}/${action}`, body);
    if (updated && updated.id) upsert(normalise(updated, action));
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      showLogin();
      return false;
    }
    if (e instanceof ApiError && e.status === 403) {
      // The role cannot act on alerts (or lost the right while the console was open).
      deny("alerts:act");
      err.textContent = t("perm.refused", { detail: e.detail });
      renderFeed();
      renderPermissionNotes();
    } else {
      err.textContent = t("feed.error", { detail: e instanceof ApiError ? e.detail : String(e) });
    }
    err.hidden = false;
    return false;
  }
}

function alertRow(a) {
  const li = h("li", { class: "alert", dataset: { id: a.id } });
  const body = h("div", { class: "alert-body" });
  const actions = h("div", { class: "alert-actions" });
  const ack = h("button", { type: "button", class: "small act-ack", onclick: () => act(state.alerts.get(a.id), "ack", "", li) }, t("feed.ack"));
  const resolve = h("button", { type: "button", class: "small act-resolve", onclick: () => act(state.alerts.get(a.id), "resolve", "", li) }, t("feed.resolve"));
  const input = h("input", { class: "comment-input", maxlength: 2000, "aria-label": t("feed.comment_prompt"), placeholder: t("feed.comment_prompt") });
  const form = h(
    "form",
    { class: "comment-form", hidden: true },
    input,
    h("button", { type: "submit", class: "small" }, t("feed.send")),
    h("button", { type: "button", class: "small secondary", onclick: () => (form.hidden = true) }, t("feed.cancel")),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (!(await act(state.alerts.get(a.id), "comment", text, li))) return;
    input.value = "";
    form.hidden = true;
  });
  const comment = h(
    "button",
    {
      type: "button",
      class: "small secondary act-comment",
      onclick: () => {
        form.hidden = !form.hidden;
        if (!form.hidden) input.focus();
      },
    },
    t("feed.comment"),
  );
  // Shelve: silence for a while, with a reason (audited on the server); unshelve ends it early.
  const reason = h("input", { class: "shelve-reason", maxlength: 500, required: true, "aria-label": t("feed.shelve_reason"), placeholder: t("feed.shelve_reason") });
  const duration = h(
    "select",
    { class: "shelve-duration", "aria-label": t("feed.shelve_for") },
    ...[3600, 4 * 3600, 8 * 3600, 24 * 3600].map((s) => h("option", { value: String(s) }, t("feed.hours", { n: s / 3600 }))),
  );
  const shelveForm = h(
    "form",
    { class: "shelve-form", hidden: true },
    h("label", null, t("feed.shelve_for"), " ", duration),
    reason,
    h("button", { type: "submit", class: "small" }, t("feed.shelve")),
    h("button", { type: "button", class: "small secondary", onclick: () => (shelveForm.hidden = true) }, t("feed.cancel")),
  );
  shelveForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const why = reason.value.trim();
    if (!why) return;
    if (!(await act(state.alerts.get(a.id), "shelve", { reason: why, duration_s: Number(duration.value) }, li))) return;
    reason.value = "";
    shelveForm.hidden = true;
  });
  const shelve = h(
    "button",
    {
      type: "button",
      class: "small secondary act-shelve",
      onclick: () => {
        shelveForm.hidden = !shelveForm.hidden;
        if (!shelveForm.hidden) reason.focus();
      },
    },
    t("feed.shelve"),
  );
  const unshelve = h("button", { type: "button", class: "small secondary act-unshelve", onclick: () => act(state.alerts.get(a.id), "unshelve", "", li) }, t("feed.unshelve"));
  actions.append(ack, resolve, comment, shelve, unshelve);
  li.append(body, actions, form, shelveForm, h("p", { class: "alert-error error", hidden: true }));
  li._parts = { body, ack, resolve, comment, form, shelve, unshelve, shelveForm };
  return li;
}

function fillAlertRow(li, a) {
  const { body, ack, resolve, comment, form, shelve, unshelve, shelveForm } = li._parts;
  const shelved = isShelved(a);
  li.className = `alert sev-${a.severity} state-${a.state}${shelved ? " shelved" : ""}${li.classList.contains("flashing") ? " flashing" : ""}`;
  li.dataset.severity = a.severity ?? "";
  li.dataset.state = a.state ?? "";
  li.dataset.shelved = String(shelved);
  li.dataset.rule = a.rule ?? "";
  const { title, text } = alertText(a);
  li.dataset.device = a.device ?? "";
  clear(body);
  const dev = state.devices.get(a.device);
  const devLink = h("button", { type: "button", class: "link device-link", onclick: () => openDetail(a.device) }, dev?.name || a.device || t("common.none"));
  body.append(
    h(
      "div",
      { class: "alert-top" },
      h("span", { class: `sev sev-${a.severity}` }, t(`severity.${a.severity}`)),
      h("span", { class: "alert-state" }, t(`state.${a.state}`)),
      h("span", { class: "alert-time", title: a.opened_at ?? "" }, fmtTime(a.opened_at, true)),
    ),
    // The rule id and the raw (English, UTC) message stay one hover away, for integrators.
    h("div", { class: "alert-msg", dataset: { title }, title: `${a.rule ?? ""}: ${a.message ?? ""}` }, text),
    h("div", { class: "alert-meta" }, h("span", null, districtName(a.district)), h("span", null, className(a.cls)), devLink),
  );
  if (shelved) {
    const who = a.shelved_by ? ` ${t("feed.by", { actor: a.shelved_by })}` : "";
    body.append(h("div", { class: "alert-shelved" }, `${t("feed.shelved_until", { time: fmtTime(a.shelved_until, true) })}${who} — ${a.shelved_reason ?? ""}`));
  }
  if (a.last_kind && a.last_kind !== "open") {
    const who = a.last_actor ? ` ${t("feed.by", { actor: a.last_actor })}` : "";
    const note = a.last_comment ? ` — ${a.last_comment}` : "";
    body.append(h("div", { class: "alert-last" }, `${t(`kind.${a.last_kind}`)}${who}${note}`));
  }
  if (a.cleared_at && a.state !== "resolved") body.append(h("div", { class: "alert-last" }, `${t("kind.clear")} ${fmtTime(a.cleared_at)}`));
  ack.hidden = a.state !== "open";
  resolve.hidden = a.state === "resolved";
  shelve.hidden = a.state === "resolved" || shelved;
  unshelve.hidden = !shelved;
  if (shelve.hidden) shelveForm.hidden = true;
  // Roles without alerts:act (app, auditor) see the buttons disabled, with the reason as a tooltip.
  const allowed = can("alerts:act");
  for (const b of [ack, resolve, comment, shelve, unshelve]) {
    b.disabled = !allowed;
    if (allowed) b.removeAttribute("title");
    else b.title = t("perm.alerts_act");
  }
  if (!allowed) {
    form.hidden = true;
    shelveForm.hidden = true;
  }
}

function renderFeed() {
  const feed = $("#feed");
  const shown = sortedAlerts().filter(visible);
  const keep = new Set(shown.map((a) => a.id));
  for (const [id, li] of state.rows) {
    if (!keep.has(id)) {
      li.remove();
      if (!state.alerts.has(id)) state.rows.delete(id);
    }
  }
  shown.forEach((a, i) => {
    let li = state.rows.get(a.id);
    if (!li) {
      li = alertRow(a);
      state.rows.set(a.id, li);
    }
    fillAlertRow(li, a);
    if (feed.children[i] !== li) feed.insertBefore(li, feed.children[i] ?? null);
  });
  $("#feed-empty").hidden = shown.length > 0;
  const active = [...state.alerts.values()].filter((a) => a.state !== "resolved" && !isShelved(a)).length;
  $("#feed-count").textContent = String(active);
}

function relabelFeed() {
  for (const li of state.rows.values()) li.remove();
  state.rows.clear();
  renderFeed();
}

function upsert(a) {
  state.alerts.set(a.id, a);
  trimAlerts();
}

function flash(id) {
  const li = state.rows.get(id);
  if (li) {
    li.classList.remove("flashing");
    void li.offsetWidth; // restart the animation
    li.classList.add("flashing");
    setTimeout(() => li.classList.remove("flashing"), 6000);
  }
  const overlay = $("#flash");
  overlay.classList.remove("on");
  void overlay.offsetWidth;
  overlay.classList.add("on");
  document.body.dataset.lastFlash = id;
  if (state.sound) beep();
}

function beep() {
  try {
    const ctx = state.audio ?? (state.audio = new AudioContext());
    const now = ctx.currentTime;
    for (let i = 0; i < 3; i++) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = "square";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, now + i * 0.3);
      gain.gain.exponentialRampToValueAtTime(0.2, now + i * 0.3 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.3 + 0.2);
      osc.connect(gain).connect(ctx.destination);
      osc.start(now + i * 0.3);
      osc.stop(now + i * 0.3 + 0.22);
    }
    state.beeps++;
  } catch (err) {
    warn("sound unavailable", err);
  }
}

async function onAlertEvent(ev) {
  let data;
  try {
    data = JSON.parse(ev.data);
  } catch (err) {
    warn("undecodable alert event", err);
    return;
  }
  if (!data || typeof data !== "object" || !data.id) return;
  const kind = data.kind;
  if (data.truncated) {
    // The notification was too large for pg_notify: fetch the alert itself.
    try {
      data = { ...(await getJSON(`/api/v1/alerts/${encodeURIComponent(data.id)}`)), kind };
    } catch (err) {
      warn("could not fetch truncated alert", err);
      return;
    }
  }
  refreshVitalsSoon();
  refreshMapSoon();
  if (typeof data.rule === "string" && data.rule.endsWith("#incident")) {
    refreshIncidentsSoon();
    return;
  }
  const a = normalise(data, kind);
  upsert(a);
  renderFeed();
  state.map.setAlerting(alertingDevices());
  if (a.severity === "critical" && (kind === "open" || kind === "escalate" || kind === "reopen")) flash(a.id);
  if (state.detailCode && state.detailCode === a.device) renderDetailAlerts(state.detailCode);
}

async function resync() {
  // After (re)connecting: the feed may have missed events. Reload active alerts plus recent history.
  try {
    const [active, recent] = await Promise.all([
      getJSON(`/api/v1/alerts${qs({ state: "active", limit: 500 })}`),
      getJSON(`/api/v1/alerts${qs({ limit: 100 })}`),
    ]);
    const next = new Map();
    for (const raw of [...items(recent), ...items(active)]) {
      if (typeof raw.rule === "string" && raw.rule.endsWith("#incident")) continue;
      const prev = state.alerts.get(raw.id);
      next.set(raw.id, { ...normalise(raw), last_kind: prev?.last_kind, last_actor: prev?.last_actor, last_comment: prev?.last_comment });
    }
    state.alerts = next;
    $("#feed-error").hidden = true;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin();
    warn("could not load alerts", err);
    $("#feed-error").textContent = t("common.error", { detail: err instanceof ApiError ? err.detail : String(err) });
    $("#feed-error").hidden = false;
  }
  renderFeed();
  state.map.setAlerting(alertingDevices());
  if (scoped()) renderVitals();
}

function setConn(s) {
  const el = $("#conn");
  el.dataset.state = s;
  el.dataset.i18n = s === "live" ? "conn.live" : s === "lost" ? "conn.lost" : "conn.connecting";
  el.textContent = t(el.dataset.i18n);
}

function connectFeed() {
  const src = new EventSource("/api/v1/alerts/stream");
  state.source = src;
  src.addEventListener("open", () => {
    state.connected = true;
    setConn("live");
    resync();
  });
  src.addEventListener("alert", onAlertEvent);
  src.addEventListener("error", () => {
    state.connected = false;
    setConn(src.readyState === EventSource.CLOSED ? "lost" : "connecting");
    if (src.readyState === EventSource.CLOSED) setTimeout(connectFeed, 5000);
  });
}

function fillDistrictFilter() {
  const sel = $("#f-district");
  const current = sel.value;
  while (sel.options.length > 1) sel.remove(1);
  for (const code of Object.keys(state.districtNames).sort()) {
    if (districtVisible(code)) sel.append(h("option", { value: code }, districtName(code)));
  }
  sel.value = current;
}

function fillClassFilter() {
  const sel = $("#f-class");
  const current = sel.value;
  while (sel.options.length > 1) sel.remove(1);
  for (const cls of [...state.classes].sort()) sel.append(h("option", { value: cls }, className(cls)));
  sel.value = current;
}

// --- incidents -----------------------------------------------------------------------------------

async function refreshIncidents() {
  try {
    state.incidents = items(await getJSON(`/api/v1/incidents${qs({ state: "active" })}`));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return showLogin();
    warn("incidents unavailable", err);
  }
  renderIncidents();
}
const refreshIncidentsSoon = debounce(refreshIncidents, 1000);

function renderIncidents() {
  const ul = $("#incidents");
  clear(ul);
  for (const inc of state.incidents) {
    ul.append(
      h(
        "li",
        { class: `incident sev-${inc.severity}`, dataset: { id: inc.id, district: inc.district ?? "" } },
        h("span", { class: `sev sev-${inc.severity}` }, t(`severity.${inc.severity}`)),
        h("span", { class: "incident-district" }, districtName(inc.district)),
        h("span", { class: "incident-rule" }, String(inc.rule ?? "").replace(/#incident$/, "")),
        h("span", { class: "incident-devices" }, t("incidents.devices", { n: inc.device_count ?? 0 })),
        h("span", { class: "incident-state" }, t(`state.${inc.state}`)),
        h("span", { class: "alert-time" }, fmtTime(inc.opened_at, true)),
      ),
    );
  }
  $("#incidents-empty").hidden = state.incidents.length > 0;
  $("#incident-count").textContent = String(state.incidents.length);
}

// --- device detail -------------------------------------------------------------------------------

async function loadModels() {
  try {
    for (const m of items(await getJSON("/api/v1/models"))) {
      state.models.set(`${m.id}@${m.version}`, m);
      if (!state.models.has(m.id) || state.models.get(m.id).version < m.version) state.models.set(m.id, m);
      if (m.device_class) state.classes.add(m.device_class);
    }
    fillClassFilter();
  } catch (err) {
    warn("models unavailable", err);
  }
}

function kv(key, value) {
  return [h("dt", null, t(`detail.${key}`)), h("dd", { dataset: { field: key } }, value ?? t("common.none"))];
}

async function openDetail(code) {
  if (!code) return;
  const seq = ++state.detailSeq;
  state.detailCode = code;
  state.map.select(code);
  const panel = $("#detail");
  const body = $("#detail-body");
  panel.hidden = false;
  panel.dataset.code = code;
  clear(body);
  body.append(h("p", { class: "muted" }, t("detail.loading")));
  let dev = null;
  try {
    dev = await getJSON(`/api/v1/devices/${encodeURIComponent(code)}`);
  } catch (err) {
    if (seq !== state.detailSeq) return;
    clear(body);
    body.append(h("p", { class: "error" }, err instanceof ApiError && err.status === 404 ? t("detail.not_found") : t("common.error", { detail: String(err.detail ?? err) })));
    return;
  }
  let latest = null;
  try {
    latest = await getJSON(`/api/v1/devices/${encodeURIComponent(code)}/latest`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) warn("latest unavailable", err);
  }
  if (seq !== state.detailSeq) return;
  const model = state.models.get(dev.model) ?? state.models.get(String(dev.model).split("@")[0]);
  const geoDev = state.devices.get(code) ?? {};
  const lastSeen =
    dev.last_seen ?? geoDev.last_seen ?? Object.values(latest?.metrics ?? {}).map((m) => m.ts).sort().at(-1) ?? null;
  const status = alertingDevices().includes(code) ? "alerting" : geoDev.status;
  const loc = dev.lon != null && dev.lat != null ? `${Number(dev.lon).toFixed(5)}, ${Number(dev.lat).toFixed(5)}${dev.crs ? ` (${dev.crs})` : ""}` : null;

  clear(body);
  $("#detail-title").textContent = `${t("detail.title")} · ${dev.name || code}`;
  const statusEl = status ? h("span", { class: `status-pill status-${status}` }, t(`status.${status}`)) : null;
  body.append(
    h(
      "dl",
      { class: "kv" },
      kv("code", code),
      kv("name", dev.name || null),
      kv("model", model ? `${pick(model.name)} (${dev.model})` : dev.model),
      kv("district", `${districtName(dev.district)}${dev.grid ? ` · ${dev.grid}` : ""}`),
      kv("location", loc),
      kv("state", h("span", null, dev.state ? t(`devstate.${dev.state}`) : t("common.none"), " ", statusEl)),
      kv("last_seen", fmtTime(lastSeen, true)),
    ),
  );

  const alertsSec = h("section", { class: "detail-section detail-alerts" }, h("h3", null, t("detail.alerts")), h("ul", { class: "mini-alerts" }));
  body.append(alertsSec);
  renderDetailAlerts(code);

  body.append(commandsSection(code, model));
  body.append(debugButton(code) ?? "");

  // Charts: the metrics that have data (latest), in model order.
  const chartGrid = h("div", { class: "chart-grid" });
  const charts = h("section", { class: "detail-section charts" }, h("h3", null, t("detail.charts")), chartGrid);
  body.append(charts);
  const modelMetrics = model?.metrics ?? [];
  const have = new Set(Object.keys(latest?.metrics ?? {}));
  const metrics = modelMetrics.filter((m) => have.has(m.name));
  for (const name of have) if (!metrics.some((m) => m.name === name)) metrics.push({ name, unit: latest.metrics[name].unit, label: null });
  if (!metrics.length) charts.append(h("p", { class: "muted" }, t("detail.no_data")));
  const to = Math.ceil(Date.now() / BUCKET_MS) * BUCKET_MS; // aligned, so 5-minute rollups can answer
  const from = to - DAY_MS;
  for (const m of metrics) {
    const fig = h("figure", { class: "chart-box", dataset: { metric: m.name } });
    const cur = latest?.metrics?.[m.name];
    fig.append(
      h(
        "figcaption",
        null,
        h("span", null, pick(m.label, m.name)),
        h("span", { class: "latest" }, cur ? `${cur.value} ${unitText(cur.unit ?? m.unit)}`.trim() : ""),
      ),
    );
    chartGrid.append(fig);
    loadSeries(code, m.name, from, to).then(
      (pts) => {
        if (seq !== state.detailSeq) return;
        fig.append(pts.length ? lineChart(pts, { from: Math.max(from, pts[0].t), to: Math.min(to, Date.now()) }) : h("p", { class: "muted" }, t("detail.no_data")));
      },
      (err) => {
        warn(`series ${m.name}`, err);
        fig.append(h("p", { class: "muted" }, t("detail.no_data")));
      },
    );
  }

}

/** Points for a chart: 5-minute buckets when the API has them, else the raw readings (sparse devices). */
async function loadSeries(code, metric, from, to) {
  const range = { device: code, metric, from: new Date(from).toISOString(), to: new Date(to).toISOString() };
  let bucketed = [];
  try {
    const b = await getJSON(`/api/v1/readings/buckets${qs({ ...range, bucket: "5m" })}`);
    bucketed = items(b).map((i) => ({ t: Date.parse(i.ts), v: Number(i.avg ?? i.value) }));
  } catch (err) {
    if (!(err instanceof ApiError && (err.status === 404 || err.status === 422))) throw err;
  }
  if (bucketed.length >= 24) return bucketed;
  // Few buckets (a new or sparse device): the raw readings show more shape.
  const r = await getJSON(`/api/v1/readings${qs({ ...range, limit: 2000 })}`);
  const raw = items(r)
    .map((i) => ({ t: Date.parse(i.ts), v: Number(i.avg ?? i.value) }))
    .sort((x, y) => x.t - y.t);
  return raw.length > bucketed.length ? raw : bucketed;
}

async function renderDetailAlerts(code) {
  const ul = $("#detail .mini-alerts");
  if (!ul) return;
  let list = [];
  try {
    list = items(await getJSON(`/api/v1/alerts${qs({ device: code, limit: 10 })}`));
  } catch (err) {
    warn("device alerts unavailable", err);
  }
  if (state.detailCode !== code) return;
  clear(ul);
  for (const raw of list) {
    const a = normalise(raw);
    ul.append(
      h(
        "li",
        { class: `sev-${a.severity} state-${a.state}` },
        h("span", { class: `sev sev-${a.severity}` }, t(`severity.${a.severity}`)),
        h("span", null, t(`state.${a.state}`)),
        h("span", { class: "alert-time" }, fmtTime(a.opened_at, true)),
        h("span", { class: "alert-msg", title: a.rule ?? "" }, alertText(a).text),
      ),
    );
  }
  if (!list.length) ul.append(h("li", { class: "muted" }, t("detail.no_alerts")));
}

function paramInput(name, spec) {
  const type = spec?.type ?? "str";
  const values = spec?.values ?? spec?.enum;
  if (Array.isArray(values)) return h("select", { name }, values.map((v) => h("option", { value: String(v) }, String(v))));
  if (type === "bool" || type === "boolean") return h("input", { type: "checkbox", name });
  if (type === "int" || type === "float" || type === "number") {
    return h("input", {
      type: "number",
      name,
      required: spec?.required === false ? null : true,
      min: spec?.min,
      max: spec?.max,
      step: type === "int" ? 1 : "any",
      value: spec?.default ?? spec?.min ?? "",
    });
  }
  return h("input", { type: "text", name, value: spec?.default ?? "" });
}

function readParam(el, spec) {
  const type = spec?.type ?? "str";
  if (el.type === "checkbox") return el.checked;
  if (type === "int") return parseInt(el.value, 10);
  if (type === "float" || type === "number") return Number(el.value);
  return el.value;
}

function commandsSection(code, model) {
  const sec = h("section", { class: "detail-section commands" }, h("h3", null, t("detail.commands")));
  const cmds = model?.commands ?? [];
  if (!cmds.length) {
    sec.append(h("p", { class: "muted" }, t("detail.no_commands")));
    return sec;
  }
  const history = h("ul", { class: "cmd-history" });
  const note = h("p", { class: "perm-note", hidden: true }, t("perm.commands_send"));
  sec.append(note);
  const forms = [];
  const applyPermission = () => {
    const allowed = can("commands:send");
    note.hidden = allowed;
    for (const f of forms) for (const el of f.elements) el.disabled = !allowed;
  };
  for (const c of cmds) {
    const status = h("p", { class: "cmd-status", role: "status" });
    const fields = Object.entries(c.params ?? {}).map(([name, spec]) =>
      h("label", null, h("span", null, `${paramName(name)}${spec?.min != null || spec?.max != null ? ` (${spec.min ?? ""}–${spec.max ?? ""})` : ""}`), paramInput(name, spec)),
    );
    const form = h(
      "form",
      { class: "cmd-form", dataset: { command: c.name } },
      h("strong", null, pick(c.label, c.name)),
      ...fields,
      h("button", { type: "submit", class: "small" }, t("detail.send")),
      status,
    );
    forms.push(form);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const params = {};
      for (const [name, spec] of Object.entries(c.params ?? {})) params[name] = readParam(form.elements.namedItem(name), spec);
      status.className = "cmd-status";
      status.textContent = t("detail.loading");
      try {
        const res = await postJSON(`/api/v1/devices/${encodeURIComponent(code)}/commands`, { name: c.name, params });
        status.textContent = t("detail.sent", { name: pick(c.label, c.name), state: cmdState(res?.state ?? "ok") });
        status.dataset.state = res?.state ?? "ok";
        loadCommandHistory(code, history);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return showLogin();
        status.classList.add("error");
        if (err instanceof ApiError && err.status === 403) {
          deny("commands:send");
          status.textContent = t("perm.refused", { detail: err.detail });
          applyPermission();
        } else {
          status.textContent = t("common.error", { detail: err instanceof ApiError ? err.detail : String(err) });
        }
      }
    });
    sec.append(form);
  }
  applyPermission();
  const histSec = h("div", { class: "cmd-history-box", hidden: true }, h("h4", null, t("detail.history")), history);
  sec.append(histSec);
  loadCommandHistory(code, history);
  return sec;
}

async function loadCommandHistory(code, ul) {
  let list;
  try {
    list = items(await getJSON(`/api/v1/devices/${encodeURIComponent(code)}/commands`));
  } catch {
    return; // the commands API may not be deployed: no history section
  }
  if (state.detailCode !== code) return;
  clear(ul);
  for (const c of list.slice(0, 5)) {
    ul.append(
      h(
        "li",
        null,
        h("span", { title: c.name ?? "" }, commandName(code, c.name)),
        h("code", null, JSON.stringify(c.params ?? {})),
        h("span", { class: `cmd-state state-${c.state}` }, cmdState(c.state)),
        h("span", { class: "alert-time" }, fmtTime(c.created_at ?? c.queued_at, true)),
      ),
    );
  }
  ul.parentElement.hidden = list.length === 0;
}

/** A command parameter's label (translated when known, else its name). */
function paramName(name) {
  const key = `param.${name}`;
  const text = t(key);
  return text === key ? name : text;
}

function cmdState(s) {
  const key = `cmdstate.${s}`;
  const text = t(key);
  return text === key ? s ?? "" : text;
}

/** A command's label from the device's model (e.g. set_interval → 设置上报间隔), else its name. */
function commandName(code, name) {
  const dev = state.devices.get(code);
  const model = dev ? (state.models.get(dev.model) ?? state.models.get(String(dev.model).split("@")[0])) : null;
  const cmd = (model?.commands ?? []).find((c) => c.name === name);
  if (cmd) return pick(cmd.label, name);
  for (const m of state.models.values()) {
    const found = (m.commands ?? []).find((c) => c.name === name);
    if (found?.label) return pick(found.label, name);
  }
  return name ?? "";
}

function closeDetail() {
  state.detailCode = null;
  state.detailSeq++;
  $("#detail").hidden = true;
  state.map.select(null);
}

// --- start ---------------------------------------------------------------------------------------

let started = false;

function startApp() {
  $("#login-view").hidden = true;
  $("#app").hidden = false;
  renderWhoami();
  renderPermissionNotes();
  if (started) return;
  started = true;

  state.map = createMap($("#map"), { onDeviceClick: openDetail });
  initDebug();
  initNotifications();
  renderLegend();
  renderVitals();
  renderFeed();
  renderIncidents();
  fillDistrictFilter();
  fillClassFilter();

  $("#shade").addEventListener("change", (ev) => {
    state.map.setShade(ev.target.value);
    renderLegend();
  });
  $("#grid-toggle").addEventListener("change", (ev) => toggleGrid(ev.target.checked));
  $("#micro-toggle").addEventListener("change", (ev) => state.map.showMicro(ev.target.checked));
  $("#sources-toggle").addEventListener("change", (ev) => toggleSources(ev.target.checked));
  $("#map-reset").addEventListener("click", () => state.map.resetView());
  for (const id of ["#f-severity", "#f-district", "#f-class", "#f-state", "#f-sort"]) $(id).addEventListener("change", renderFeed);
  // A shelving that expired returns its alert to the feed, the map and the tiles without waiting for an event.
  setInterval(() => {
    if (![...state.alerts.values()].some((a) => a.shelved_until && !isShelved(a) && state.rows.get(a.id)?.dataset.shelved === "true")) return;
    renderFeed();
    state.map.setAlerting(alertingDevices());
    refreshVitalsSoon();
    refreshMapSoon();
  }, 5000);
  $("#detail-close").addEventListener("click", closeDetail);
  $("#logout").addEventListener("click", logout);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("#detail").hidden) closeDetail();
  });
  $("#sound-toggle").addEventListener("click", (ev) => {
    state.sound = !state.sound;
    const b = ev.currentTarget;
    b.setAttribute("aria-pressed", String(state.sound));
    b.dataset.i18n = state.sound ? "feed.sound_on" : "feed.sound_off";
    b.textContent = t(b.dataset.i18n);
    if (state.sound) {
      // Created on a user gesture so that the browser lets it play later.
      state.audio ??= new AudioContext();
      state.audio.resume?.();
    }
  });

  const tick = () => ($("#clock").textContent = fmtTime(new Date().toISOString()));
  tick();
  setInterval(tick, 1000);

  loadModels().then(() => {
    if (state.detailCode) openDetail(state.detailCode);
  });
  refreshDistricts().then(refreshDevices);
  refreshVitals();
  refreshIncidents();
  connectFeed();
  setInterval(refreshVitals, VITALS_EVERY_MS);
  setInterval(refreshDevices, MAP_EVERY_MS);
  setInterval(refreshDistricts, MAP_EVERY_MS * 2);
  setInterval(refreshIncidents, MAP_EVERY_MS);
  setInterval(refreshSources, MAP_EVERY_MS * 2);
}

function relabelAll() {
  applyStatic();
  document.title = t("app.title");
  renderWhoami();
  renderVitals();
  renderLegend();
  relabelFeed();
  renderIncidents();
  fillDistrictFilter();
  fillClassFilter();
  if (state.map) state.map.relabel();
  renderSourcesView();
  if (state.detailCode) openDetail(state.detailCode);
}

async function main() {
  applyStatic();
  document.title = t("app.title");
  $("#lang-toggle").addEventListener("click", () => setLang(lang() === "zh" ? "en" : "zh"));
  onLangChange(relabelAll);
  const session = await checkSession();
  if (session === "login") showLogin();
  else startApp();
}

main();
