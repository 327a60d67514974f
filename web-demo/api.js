// Talking to one region through the demo's page server (`/api/{region}/...`), which passes
// requests on to the region's /v1 API and its fault controls.

// A session token is `node=hex,node=hex`; two tokens combine by taking, per node, the later time.
export function mergeTokens(a, b) {
  const out = new Map();
  for (const t of [a, b]) {
    for (const part of (t || "").split(",").filter(Boolean)) {
      const [node, hex] = part.split("=");
      const prev = out.get(node);
      if (!prev || BigInt("0x" + hex) > BigInt("0x" + prev)) out.set(node, hex);
    }
  }
  return [...out].sort().map(([n, h]) => `${n}=${h}`).join(",");
}

export class Region {
  constructor(id, session) {
    this.id = id;
    this.base = `/api/${id}`;
    this.session = session; // shared: {token, carry}
    this.lastToken = "";
  }

  // One request. Returns {status, body, ms}; never throws for HTTP errors.
  async request(method, path, {body, contentType, carry} = {}) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = contentType || "application/json";
    const useToken = carry ?? this.session.carry;
    if (useToken && this.session.token) {
      headers["meridian-session"] = this.session.token;
      headers["meridian-max-wait-ms"] = "1000";
    }
    const t0 = performance.now();
    let resp;
    try {
      resp = await fetch(this.base + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      return {status: 0, body: {error: {code: "unreachable", message: String(e)}}, ms: 0};
    }
    const token = resp.headers.get("meridian-session");
    if (token) {
      this.lastToken = token;
      // the page is one user moving between regions: it keeps what every answer told it
      this.session.token = mergeTokens(this.session.token, token);
    }
    let data = null;
    try { data = await resp.json(); } catch { /* empty body */ }
    return {status: resp.status, body: data, ms: performance.now() - t0};
  }

  get(path, opts) { return this.request("GET", path, opts); }
  patch(path, body) {
    return this.request("PATCH", path, {body, contentType: "application/merge-patch+json"});
  }
  put(path, body) { return this.request("PUT", path, {body}); }
  ops(path, ops) { return this.request("POST", path + "/ops", {body: {ops}}); }
  cluster() { return this.request("GET", "/v1/cluster", {carry: false}); }
  faults(change) { return this.request("POST", "/faults", {body: change, carry: false}); }

  // The live change feed of one document; `onEvent(kind, data)` for every event. EventSource
  // reconnects by itself and resumes with Last-Event-ID.
  follow(path, onEvent, onState) {
    const es = new EventSource(this.base + path);
    for (const kind of ["document", "change", "reset", "behind"]) {
      es.addEventListener(kind, (e) => onEvent(kind, e.data ? JSON.parse(e.data) : null));
    }
    es.onopen = () => onState(true);
    es.onerror = () => onState(false);
    return es;
  }
}

// The edit that turns text `a` into `b`: one splice over the part that differs.
export function textSplice(a, b) {
  const ca = [...a], cb = [...b];
  let start = 0;
  while (start < ca.length && start < cb.length && ca[start] === cb[start]) start++;
  let endA = ca.length, endB = cb.length;
  while (endA > start && endB > start && ca[endA - 1] === cb[endB - 1]) { endA--; endB--; }
  if (start === endA && start === endB) return null;
  return {index: start, delete: endA - start, insert: cb.slice(start, endB).join("")};
}
