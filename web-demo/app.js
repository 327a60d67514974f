// The demo page: one column per region, each editing and watching the same profile.
import {Region, textSplice} from "./api.js";
import {LagChart} from "./chart.js";

const DOC = "/v1/users/demo";
const SAMPLE = {name: "Ada", bio: "Writes from anywhere.", plan: "free", logins: 0, tags: ["beta"]};

const session = {token: "", carry: true};
const chart = new LagChart(document.getElementById("lag"));
// first sighting of each node change (by its HLC): where and when the page saw it
const sightings = new Map();
// the session's last write of a field, to tell a stale read from a fresh one
let lastWrite = null;

function log(text, kind = "") {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const ol = document.getElementById("log");
  ol.prepend(li);
  while (ol.children.length > 200) ol.lastChild.remove();
}

function describe(r) {
  if (r.status >= 200 && r.status < 300) return `${r.status} in ${r.ms.toFixed(0)} ms`;
  const e = r.body?.error || {};
  const where = e.region ? ` (the data is in ${e.region})` : "";
  return `${r.status} ${e.code || ""}: ${e.message || ""}${where}`;
}

function clock(hlc) {
  const m = /T(\d\d:\d\d:\d\d\.\d{3})/.exec(hlc || "");
  return m ? m[1] : "pending";
}

function showSession() {
  document.getElementById("session-token").textContent = session.token || "none yet";
}

function pointerGet(value, path) {
  return path.split("/").slice(1).reduce(
    (v, k) => (v == null ? undefined : v[k.replace(/~1/g, "/").replace(/~0/g, "~")]), value);
}

class Column {
  constructor(region, others) {
    this.region = region;
    this.others = others;
    this.doc = null; // {value, version, conflicts}
    this.cut = false;
    const el = document.getElementById("region-template").content.firstElementChild.cloneNode(true);
    el.dataset.region = region.id;
    el.querySelector(".name").textContent = region.id;
    document.getElementById("regions").append(el);
    this.el = el;
    this.q = (s) => el.querySelector(s);
    this.wire();
    region.follow(DOC, (kind, data) => this.onEvent(kind, data),
      (open) => { this.q(".feed").textContent = open ? "● following" : "○ reconnecting"; });
    region.get("/faults").then((r) => r.status === 200 && this.setCut(r.body.cut.length > 0));
  }

  wire() {
    const on = (sel, f) => this.q(sel).addEventListener("click", f);
    const form = this.q(".editor");
    on(".save-name", () => this.write("name", form.name.value));
    on(".save-plan", () => this.write("plan", form.plan.value));
    on(".save-bio", () => this.saveBio(form.bio.value));
    on(".login", () => this.ops([{op: "increment", path: "/logins", by: 1}], "+1 login"));
    on(".add-tag", () => {
      const tag = form.tag.value.trim();
      if (!tag) return;
      form.tag.value = "";
      this.ops([{op: "insert", path: "/tags/-", value: tag}], `add tag "${tag}"`);
    });
    on(".cut", () => this.setFaults(true));
    on(".heal", () => this.setFaults(false));
    on(".read", () => this.read());
    form.addEventListener("submit", (e) => e.preventDefault());
  }

  async write(field, value) {
    const r = await this.region.patch(DOC, {[field]: value});
    this.afterWrite(`${field} = ${JSON.stringify(value)}`, r);
    if (r.status < 300) lastWrite = {region: this.region.id, path: `/${field}`, value};
  }

  async saveBio(text) {
    const before = typeof this.doc?.value?.bio === "string" ? this.doc.value.bio : "";
    const edit = textSplice(before, text);
    if (!edit) return;
    await this.ops([{op: "splice", path: "/bio", ...edit}],
      `bio: at ${edit.index} delete ${edit.delete}, insert ${JSON.stringify(edit.insert)}`);
  }

  async ops(ops, what) {
    this.afterWrite(what, await this.region.ops(DOC, ops));
  }

  afterWrite(what, r) {
    log(`write in ${this.region.id}: ${what}: ${describe(r)}`, r.status < 300 ? "write" : "error");
    showSession();
    this.q(".last-token code").textContent = this.region.lastToken || "—";
  }

  async read() {
    const carry = session.carry;
    const r = await this.region.get(DOC);
    const how = carry ? "with the session token" : "without a token";
    if (r.status !== 200) {
      log(`read in ${this.region.id} ${how}: ${describe(r)}`, "error");
      return;
    }
    let verdict = "";
    if (lastWrite) {
      const seen = pointerGet(r.body.value, lastWrite.path);
      verdict = JSON.stringify(seen) === JSON.stringify(lastWrite.value)
        ? ` — includes the session's write in ${lastWrite.region}`
        : ` — STALE: ${lastWrite.path} is ${JSON.stringify(seen)}, the session wrote ${JSON.stringify(lastWrite.value)} in ${lastWrite.region}`;
    }
    log(`read in ${this.region.id} ${how}: ${describe(r)}${verdict}`, verdict.includes("STALE") ? "stale" : "read");
    showSession();
  }

  async setFaults(cut) {
    const change = cut ? {cut: this.others} : {heal: this.others};
    const r = await this.region.faults(change);
    log(`${cut ? "cut" : "healed"} ${this.region.id} ${cut ? "off from" : "with"} ${this.others.join(", ")}: ${describe(r)}`, "fault");
    if (r.status === 200) this.setCut(r.body.cut.length > 0);
  }

  setCut(cut) {
    this.cut = cut;
    this.el.classList.toggle("is-cut", cut);
  }

  onEvent(kind, data) {
    if (kind === "behind" || kind === "reset") {
      log(`${this.region.id}: change feed ${kind}; reading again`);
    }
    if (kind === "change") {
      for (const c of data.changes || []) this.sighted(c);
      if (data.node && data.node !== this.region.id) {
        log(`${this.region.id} received a change from ${data.node} (${clock(data.hlc)})`, "replicated");
      }
    }
    // an event of a document that does not exist (yet, or any more) says all there is to
    // show: a read would only be answered 404
    if ((kind === "document" || kind === "change") && data && data.value === null) {
      this.render({value: null, conflicts: []});
    } else {
      this.refresh();
    }
  }

  // Replication lag as the page sees it: first sighting in the writing region to this one.
  sighted({node, hlc}) {
    const now = performance.now();
    const s = sightings.get(hlc);
    if (!s) {
      sightings.set(hlc, {node, at: now, local: node === this.region.id});
    } else if (s.local && node !== this.region.id) {
      chart.add(this.region.id, now - s.at);
    }
    if (sightings.size > 5000) sightings.delete(sightings.keys().next().value);
  }

  // The document as this region has it (no token: the live view is the region's own state).
  async refresh() {
    const r = await this.region.get(DOC + "?conflicts=true", {carry: false});
    if (r.status === 200) this.render(r.body);
    else if (r.status === 404) this.render({value: null, conflicts: []});
  }

  render(doc) {
    this.doc = doc;
    const v = doc.value || {};
    this.q(".live").textContent = doc.value ? JSON.stringify(doc.value, null, 2) : "(no document)";
    const form = this.q(".editor");
    for (const f of ["name", "plan", "bio"]) {
      if (document.activeElement !== form[f] && v[f] !== undefined) form[f].value = v[f];
    }
    this.q(".logins").textContent = v.logins ?? 0;
    const tags = this.q(".tags");
    tags.replaceChildren(...(v.tags || []).map((t, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "tag";
      b.title = "remove";
      b.textContent = `${t} ×`;
      b.onclick = () => this.ops([{op: "remove", path: `/tags/${i}`}], `remove tag "${t}"`);
      return b;
    }));
    this.renderConflicts(doc.conflicts || []);
  }

  renderConflicts(conflicts) {
    const box = this.q(".conflicts");
    box.replaceChildren();
    for (const c of conflicts) {
      const div = document.createElement("div");
      div.className = "conflict";
      div.dataset.path = c.path;
      const h = document.createElement("h4");
      h.textContent = `conflict on ${c.path}: written concurrently in ${c.values.length} places`;
      div.append(h);
      c.values.forEach((val, i) => {
        const row = document.createElement("div");
        row.className = "value" + (i === 0 ? " winner" : "");
        row.textContent = `${JSON.stringify(val.value)} — ${val.node || "a client"} at ${clock(val.hlc)}${i === 0 ? "  (wins)" : ""} `;
        const pick = document.createElement("button");
        pick.type = "button";
        pick.className = "pick";
        pick.dataset.value = JSON.stringify(val.value);
        pick.textContent = "keep this";
        pick.onclick = () => this.ops([{op: "set", path: c.path, value: val.value}],
          `resolve ${c.path} = ${JSON.stringify(val.value)}`);
        row.append(pick);
        div.append(row);
      });
      box.append(div);
    }
  }

  async poll() {
    const r = await this.region.cluster();
    const body = this.q(".peers tbody");
    if (r.status !== 200) {
      body.replaceChildren();
      this.q(".state").textContent = `(${describe(r)})`;
      return;
    }
    body.replaceChildren(...r.body.peers.map((p) => {
      const tr = document.createElement("tr");
      tr.dataset.peer = p.id;
      tr.className = p.reachable ? "up" : "down";
      const lag = p.behind_peer;
      for (const text of [p.id, p.reachable ? "● yes" : "✕ no", Math.round(lag.seconds * 1000), lag.changes]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }));
    const up = r.body.peers.filter((p) => p.reachable).length;
    this.q(".state").textContent = up === 0 ? "isolated" : `${up}/${r.body.peers.length} peers reachable`;
  }
}

// Whether `path` (`/v1/{collection}/{id}`) exists in `region`, by paging through the list.
async function exists(region, path) {
  const [, , collection, id] = path.split("/");
  let after = null;
  for (;;) {
    const q = after === null ? "" : `&after=${encodeURIComponent(after)}`;
    const r = await region.get(`/v1/${collection}?limit=1000${q}`, {carry: false});
    if (r.status !== 200) return false;
    if (r.body.items.some((d) => d.id === id)) return true;
    if (r.body.next == null) return false;
    after = r.body.next;
  }
}

async function main() {
  const cfg = await (await fetch("config.json")).json();
  const ids = cfg.regions.map((r) => r.id);
  const regions = cfg.regions.map((r) => new Region(r.id, session));
  const carry = document.getElementById("carry");
  carry.addEventListener("change", () => {
    session.carry = carry.checked;
    log(session.carry ? "carrying the session token: reads include the session's writes, or wait, or fail"
      : "not carrying the session token: reads answer at once from what each region has");
  });
  document.getElementById("reset-session").addEventListener("click", () => {
    session.token = "";
    lastWrite = null;
    showSession();
    log("forgot the session token");
  });
  if (!cfg.controls) document.body.classList.add("no-controls");

  // the profile every column edits: created once, in the first region (asked by listing the
  // collection, which answers 200 either way, so a first load makes no failed request)
  const first = regions[0];
  if (!(await exists(first, DOC))) {
    log(`created the profile in ${first.id}: ${describe(await first.put(DOC, SAMPLE))}`, "write");
  }
  const columns = regions.map((r) => new Column(r, ids.filter((id) => id !== r.id)));
  const tick = async () => {
    await Promise.all(columns.map((c) => c.poll()));
    chart.draw();
  };
  tick();
  setInterval(tick, 1000);
  log(`watching ${ids.join(", ")}`);
}

main().catch((e) => log(`the page failed: ${e}`, "error"));
