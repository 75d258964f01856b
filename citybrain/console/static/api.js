// Thin fetch wrappers for the platform API (same origin, JSON).

export class ApiError extends Error {
  constructor(status, detail, url) {
    super(`${status} ${detail}`);
    this.status = status;
    this.detail = detail;
    this.url = url;
  }
}

async function parse(resp, url) {
  const type = resp.headers.get("content-type") || "";
  const body = type.includes("json") ? await resp.json().catch(() => null) : await resp.text().catch(() => "");
  if (!resp.ok) {
    let detail = resp.statusText;
    if (body && typeof body === "object") {
      const d = body.detail ?? body.reason ?? body;
      detail = typeof d === "string" ? d : JSON.stringify(d);
    } else if (typeof body === "string" && body) detail = body.slice(0, 200);
    throw new ApiError(resp.status, detail, url);
  }
  return body;
}

// The session's CSRF token (from POST or GET /api/v1/session): unsafe requests carry it,
// because the session cookie alone would also be sent by a forged cross-site form.
let csrfToken = "";

export function setCsrfToken(token) {
  csrfToken = typeof token === "string" ? token : "";
}

export async function getJSON(url, { signal } = {}) {
  const resp = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", signal });
  return parse(resp, url);
}

export async function postJSON(url, data) {
  const resp = await fetch(url, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/json",
      ...(csrfToken ? { "X-CSRF-Token": csrfToken } : {}),
    },
    credentials: "same-origin",
    body: JSON.stringify(data ?? {}),
  });
  return parse(resp, url);
}

export async function deleteJSON(url) {
  const resp = await fetch(url, {
    method: "DELETE",
    headers: { Accept: "application/json", ...(csrfToken ? { "X-CSRF-Token": csrfToken } : {}) },
    credentials: "same-origin",
  });
  return parse(resp, url);
}

/** Build a query string, skipping empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  const text = p.toString();
  return text ? `?${text}` : "";
}

/** Items of a list response, whether it is {items: [...]} or a bare array. */
export function items(body) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body.items)) return body.items;
  return [];
}
