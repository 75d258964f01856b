// Who is signed in, what they may see (district / class grants) and what the console lets them do.
// The server decides every call (403 / 404); this only hides or disables what it would refuse,
// and learns from a 403 (a role changed while the console was open).

// The console's copy of citybrain.security.identities.PERMISSIONS for the permissions it acts
// with (tests/e2e/test_console.py checks it against the Python table).
export const ROLE_PERMISSIONS = {
  "alerts:act": ["admin", "operator"],
  "commands:send": ["admin", "operator"],
  "devices:debug": ["admin", "integrator"],
  "notifications:read": ["admin", "integrator", "operator", "auditor"],
  "notifications:write": ["admin", "operator"],
};

let principal = null; // null: not known (authentication not deployed): the server decides alone
const denied = new Set();

function strings(v) {
  return Array.isArray(v) ? v.filter((x) => typeof x === "string" && x) : [];
}

/** Take the principal from a GET/POST /api/v1/session answer (several shapes are accepted). */
export function setPrincipal(session) {
  denied.clear();
  const p = session?.principal ?? session?.user ?? null;
  const user = (typeof p === "object" && p ? p.user ?? p.username ?? p.name : p) ?? session?.username ?? session?.name;
  if (typeof user !== "string" || !user) {
    principal = null;
    return null;
  }
  const src = typeof p === "object" && p ? p : {};
  principal = {
    user,
    roles: strings(src.roles),
    districts: strings(src.districts).sort(),
    classes: strings(src.classes).sort(),
  };
  return principal;
}

export function getPrincipal() {
  return principal;
}

/** Whether the console should offer an action that needs this permission. */
export function can(permission) {
  if (denied.has(permission)) return false;
  if (!principal || principal.roles.length === 0) return true; // roles unknown: let the server answer
  const roles = ROLE_PERMISSIONS[permission];
  return !roles || principal.roles.some((r) => roles.includes(r));
}

/** The server answered 403 for this permission: stop offering it. */
export function deny(permission) {
  denied.add(permission);
}

/** Granted districts (empty: all). */
export function grantedDistricts() {
  return principal?.districts ?? [];
}

/** Granted device classes (empty: all). */
export function grantedClasses() {
  return principal?.classes ?? [];
}

/** Whether the signed-in principal sees only part of the city. */
export function scoped() {
  return grantedDistricts().length > 0;
}

export function districtVisible(code) {
  const d = grantedDistricts();
  return d.length === 0 || d.includes(code);
}
