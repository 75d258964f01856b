// Bilingual labels (zh-CN / en). t(key, vars) looks a key up in the current language,
// falling back to English, then to the key itself. The choice is kept in localStorage.

const STORAGE_KEY = "citybrain.console.lang";

export const DICT = {
  en: {
    "app.title": "Xiamen City Brain — Operations Console",
    "app.short": "City Brain Ops",
    "lang.toggle": "中文",
    "conn.live": "Live",
    "conn.connecting": "Connecting…",
    "conn.lost": "Feed disconnected — reconnecting",
    "vitals.aqi": "City AQI",
    "vitals.water": "Water ≥ target",
    "vitals.noise": "Noise exceedances today",
    "vitals.manhole": "Manhole alerts open",
    "vitals.devices": "Devices",
    "vitals.online": "online",
    "vitals.stale": "stale",
    "vitals.offline": "offline",
    "vitals.ingest": "Ingest",
    "vitals.per_min": "/min",
    "vitals.alerts": "Open alerts",
    "vitals.unavailable": "Vital signs unavailable",
    "vitals.updated": "Updated {time}",
    "map.title": "City map",
    "map.shade": "Shade districts by",
    "map.shade.aqi": "AQI level",
    "map.shade.water": "Water class share",
    "map.shade.alerts": "Open alerts",
    "map.grid": "Grid cells",
    "map.reset": "Reset view",
    "map.no_devices": "No devices with a location yet",
    "map.unavailable": "Map data unavailable",
    "map.legend": "Legend",
    "map.sources": "Pollution sources",
    "sources.title": "Pollution sources by district",
    "sources.col.district": "District",
    "sources.col.sources": "Sources",
    "sources.col.with_permit": "Valid permit",
    "sources.col.alerting": "Exceeding",
    "sources.col.over_cap": "Over a daily cap",
    "sources.permit": "Permit",
    "sources.permit.valid": "valid",
    "sources.permit.expired": "expired",
    "sources.permit.none": "no permit",
    "sources.load_today": "Load today / daily cap",
    "sources.status.exceeding": "Exceeding (open alert)",
    "sources.status.over_cap": "Daily cap reached",
    "sources.status.expired": "Permit expired",
    "sources.status.no_permit": "No permit",
    "sources.status.ok": "Within permit",
    "sources.unavailable": "Sources unavailable",
    "status.fresh": "Fresh",
    "status.stale": "Stale",
    "status.offline": "Offline",
    "status.alerting": "Alerting",
    "status.unknown": "Unknown",
    "feed.title": "Live alerts",
    "feed.empty": "No alerts. All quiet.",
    "feed.severity": "Severity",
    "feed.district": "District",
    "feed.class": "Class",
    "feed.show": "Show",
    "feed.show.active": "Active",
    "feed.show.all": "All",
    "feed.all": "All",
    "feed.sound": "Sound",
    "feed.sound_on": "Sound on",
    "feed.sound_off": "Sound off",
    "feed.ack": "Ack",
    "feed.resolve": "Resolve",
    "feed.comment": "Comment",
    "feed.comment_prompt": "Comment",
    "feed.send": "Send",
    "feed.cancel": "Cancel",
    "feed.by": "by {actor}",
    "feed.error": "Action failed: {detail}",
    "incidents.title": "District incidents",
    "incidents.empty": "No active district incidents.",
    "incidents.devices": "{n} devices",
    "severity.info": "Info",
    "severity.warning": "Warning",
    "severity.major": "Major",
    "severity.critical": "Critical",
    "state.open": "Open",
    "state.acknowledged": "Acknowledged",
    "state.resolved": "Resolved",
    "kind.open": "opened",
    "kind.escalate": "escalated",
    "kind.deescalate": "de-escalated",
    "kind.clear": "cleared",
    "kind.ack": "acknowledged",
    "kind.resolve": "resolved",
    "kind.reopen": "reopened",
    "kind.assign": "assigned",
    "kind.comment": "comment",
    "class.air": "Air",
    "class.water": "Water",
    "class.noise": "Noise",
    "class.manhole": "Manhole",
    "class.pole": "Smart pole",
    "class.wastewater": "Wastewater source",
    "class.fluegas": "Flue-gas source",
    "detail.title": "Device",
    "detail.close": "Close",
    "detail.code": "Code",
    "detail.model": "Model",
    "detail.name": "Name",
    "detail.district": "District",
    "detail.location": "Location",
    "detail.state": "State",
    "detail.last_seen": "Last seen",
    "detail.charts": "Last 24 hours",
    "detail.no_data": "No data in the last 24 h",
    "detail.alerts": "Recent alerts",
    "detail.no_alerts": "No alerts for this device.",
    "detail.commands": "Commands",
    "detail.no_commands": "This model has no commands.",
    "detail.send": "Send",
    "detail.sent": "Command {name}: {state}",
    "detail.history": "Recent commands",
    "detail.loading": "Loading…",
    "detail.not_found": "Device not found",
    "login.title": "Sign in",
    "login.username": "User name",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.failed": "Sign-in failed",
    "login.logout": "Sign out",
    "who.all": "All districts",
    "who.city_wide": "city-wide",
    "who.title": "Signed in as {user}; sees {scope}",
    "role.admin": "admin",
    "role.integrator": "integrator",
    "role.operator": "operator",
    "role.app": "app",
    "role.auditor": "auditor",
    "perm.alerts_act": "Read-only: your role cannot acknowledge, resolve or comment on alerts.",
    "perm.commands_send": "Your role cannot send commands to devices.",
    "perm.refused": "Not permitted: {detail}",
    "common.never": "never",
    "common.none": "—",
    "common.error": "Error: {detail}",
  },
  zh: {
    "app.title": "厦门城市大脑 — 运行监测中心",
    "app.short": "城市大脑运行中心",
    "lang.toggle": "English",
    "conn.live": "实时",
    "conn.connecting": "连接中…",
    "conn.lost": "告警推送已断开，正在重连",
    "vitals.aqi": "全市AQI",
    "vitals.water": "水质达标率",
    "vitals.noise": "今日噪声超标",
    "vitals.manhole": "井盖告警",
    "vitals.devices": "设备",
    "vitals.online": "在线",
    "vitals.stale": "迟滞",
    "vitals.offline": "离线",
    "vitals.ingest": "接入速率",
    "vitals.per_min": "条/分",
    "vitals.alerts": "未结告警",
    "vitals.unavailable": "城市体征暂不可用",
    "vitals.updated": "更新于 {time}",
    "map.title": "城市地图",
    "map.shade": "区域着色",
    "map.shade.aqi": "AQI 等级",
    "map.shade.water": "水质达标比例",
    "map.shade.alerts": "未结告警数",
    "map.grid": "单元网格",
    "map.reset": "重置视图",
    "map.no_devices": "暂无带位置的设备",
    "map.unavailable": "地图数据不可用",
    "map.legend": "图例",
    "map.sources": "污染源",
    "sources.title": "各区污染源",
    "sources.col.district": "区",
    "sources.col.sources": "污染源数",
    "sources.col.with_permit": "持有效许可证",
    "sources.col.alerting": "超标",
    "sources.col.over_cap": "超日许可排放量",
    "sources.permit": "排污许可证",
    "sources.permit.valid": "有效",
    "sources.permit.expired": "已过期",
    "sources.permit.none": "无许可证",
    "sources.load_today": "今日排放量 / 日许可量",
    "sources.status.exceeding": "超标（未结告警）",
    "sources.status.over_cap": "达到日许可排放量",
    "sources.status.expired": "许可证过期",
    "sources.status.no_permit": "无许可证",
    "sources.status.ok": "许可范围内",
    "sources.unavailable": "污染源数据不可用",
    "status.fresh": "正常",
    "status.stale": "迟滞",
    "status.offline": "离线",
    "status.alerting": "告警中",
    "status.unknown": "未知",
    "feed.title": "实时告警",
    "feed.empty": "暂无告警，一切正常。",
    "feed.severity": "级别",
    "feed.district": "行政区",
    "feed.class": "类别",
    "feed.show": "显示",
    "feed.show.active": "未结",
    "feed.show.all": "全部",
    "feed.all": "全部",
    "feed.sound": "声音",
    "feed.sound_on": "声音开",
    "feed.sound_off": "声音关",
    "feed.ack": "确认",
    "feed.resolve": "解除",
    "feed.comment": "备注",
    "feed.comment_prompt": "备注",
    "feed.send": "提交",
    "feed.cancel": "取消",
    "feed.by": "操作人 {actor}",
    "feed.error": "操作失败：{detail}",
    "incidents.title": "区域事件",
    "incidents.empty": "暂无进行中的区域事件。",
    "incidents.devices": "{n} 台设备",
    "severity.info": "提示",
    "severity.warning": "一般",
    "severity.major": "重要",
    "severity.critical": "紧急",
    "state.open": "未确认",
    "state.acknowledged": "已确认",
    "state.resolved": "已解除",
    "kind.open": "产生",
    "kind.escalate": "升级",
    "kind.deescalate": "降级",
    "kind.clear": "恢复",
    "kind.ack": "确认",
    "kind.resolve": "解除",
    "kind.reopen": "重开",
    "kind.assign": "指派",
    "kind.comment": "备注",
    "class.air": "空气",
    "class.water": "水质",
    "class.noise": "噪声",
    "class.manhole": "井盖",
    "class.pole": "智慧杆",
    "class.wastewater": "废水污染源",
    "class.fluegas": "废气污染源",
    "detail.title": "设备",
    "detail.close": "关闭",
    "detail.code": "编码",
    "detail.model": "型号",
    "detail.name": "名称",
    "detail.district": "行政区",
    "detail.location": "位置",
    "detail.state": "状态",
    "detail.last_seen": "最近上报",
    "detail.charts": "近24小时",
    "detail.no_data": "近24小时无数据",
    "detail.alerts": "近期告警",
    "detail.no_alerts": "该设备暂无告警。",
    "detail.commands": "控制指令",
    "detail.no_commands": "该型号无控制指令。",
    "detail.send": "下发",
    "detail.sent": "指令 {name}：{state}",
    "detail.history": "近期指令",
    "detail.loading": "加载中…",
    "detail.not_found": "未找到设备",
    "login.title": "登录",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.failed": "登录失败",
    "login.logout": "退出登录",
    "who.all": "全市",
    "who.city_wide": "全市",
    "who.title": "当前用户 {user}；可见范围 {scope}",
    "role.admin": "管理员",
    "role.integrator": "集成商",
    "role.operator": "值班员",
    "role.app": "应用",
    "role.auditor": "审计员",
    "perm.alerts_act": "只读：当前角色无权确认、处置或评论告警。",
    "perm.commands_send": "当前角色无权向设备下发指令。",
    "perm.refused": "无权限：{detail}",
    "common.never": "从未",
    "common.none": "—",
    "common.error": "错误：{detail}",
  },
};

export const LANGS = ["zh", "en"];

function initialLang() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && LANGS.includes(saved)) return saved;
  } catch {
    // localStorage can be disabled; fall through to the browser language.
  }
  return (navigator.language || "zh").toLowerCase().startsWith("zh") ? "zh" : "en";
}

let current = initialLang();
const listeners = new Set();

export function lang() {
  return current;
}

export function setLang(next) {
  if (!LANGS.includes(next) || next === current) return;
  current = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // not persisted; fine
  }
  for (const fn of listeners) fn(next);
}

export function onLangChange(fn) {
  listeners.add(fn);
}

export function t(key, vars) {
  const text = DICT[current][key] ?? DICT.en[key] ?? key;
  if (!vars) return text;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/** A {zh, en} label object → the current language's text. */
export function pick(label, fallback = "") {
  if (!label || typeof label !== "object") return label == null ? fallback : String(label);
  return label[current] ?? label.en ?? label.zh ?? fallback;
}

/** Re-apply static labels: elements with data-i18n (textContent), data-i18n-title, data-i18n-aria. */
export function applyStatic(root = document) {
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-aria]")) el.setAttribute("aria-label", t(el.dataset.i18nAria));
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
}

/** Locale-aware time display in Asia/Shanghai (the operations centre's zone). */
export function fmtTime(iso, withDate = false) {
  if (!iso) return t("common.never");
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const opts = { timeZone: "Asia/Shanghai", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  if (withDate) Object.assign(opts, { month: "2-digit", day: "2-digit" });
  return d.toLocaleString(current === "zh" ? "zh-CN" : "en-GB", opts);
}
