// Many real socket.io-client clients in one Node process, for the connection
// state recovery (CSR) tests and the rolling-restart proof.
//
//   node tests/js/csr_clients.mjs [--max-seconds 900]
//
// Commands arrive as JSON lines on stdin; everything the driver sees leaves as
// JSON lines on stdout (one object a line, each with "type" and "t", the wall
// clock in ms). The process exits on {"cmd":"close"}, when stdin closes (its
// parent died) or after --max-seconds, whichever comes first.
//
// Each client talks to the dynos through a TCP proxy of its own on 127.0.0.1:
// the socket.io-client Manager always reconnects to the URL it was given (the
// proxy), and the proxy picks the dyno each new TCP connection goes to. The
// client object (and so its `_pid` and `_lastOffset`) lives across the
// reconnects, exactly as in a browser. The proxy also makes the network drops:
//   cut        both TCP connections are closed: "transport close" on both ends
//   blackhole  nothing passes any more, nothing is closed: the client notices
//              by ping timeout, the server later (or never, until its own ping
//              timeout): a reconnect before the server noticed the old socket
//              died.
//
// Commands:
//   {"cmd":"add","clients":[{"id":"c0","urls":["http://127.0.0.1:5001",...],
//        "auth":{"user":"u0"},"rooms":["r0"],"policy":"rotate"|"stay",
//        "namespace":"/"}], "options":{...}}
//     policy rotate: every new connection goes to the next URL of the list
//     (the first one to urls[0]); stay: the same URL until it refuses;
//     balance: a load balancer's way, the first connection to urls[0], then
//     round robin (one turn shared by every client of the process) over the
//     URLs not marked down (see "upstreams"), and when that dyno refuses the
//     TCP connection another one at once, the client's connection kept
//     waiting meanwhile (a reconnect always lands on a live dyno while one
//     is left; nothing is ever cut for being silent).
//     options (defaults): reconnectionDelay 300, reconnectionDelayMax 2000,
//     randomizationFactor 0.5, pingTimeoutMs (none: the server's),
//     rejoin true (join the rooms again after a connect that was not
//     recovered; the user room is the server's connect handler's business),
//     verifyRooms false (after every reconnect ask the server_app "rooms"
//     event and report the answer), reconnectOnServerDisconnect true
//     (reconnect by hand after "io server disconnect", which the Manager does
//     not retry).
//     Emits {"type":"ready","id","sid"} once a client is connected and its
//     rooms are joined.
//   {"cmd":"upstreams","req":R,"down":[URL,...]}  the dynos the balance
//     policy skips (a router that stopped routing to a dyno told to stop, or
//     not yet healthy) -> {"type":"upstreams","req":R,"down":[...]}
//   {"cmd":"drop","mode":"cut"|"blackhole", "ids":[...] | "upstream":URL | "all":true}
//     -> {"type":"dropped","mode","count","ids"}
//   {"cmd":"emit","req":R,"id":C,"event":E,"data":D}  (with an ack)
//     -> {"type":"reply","req":R,"id":C,"answer":...} (or "error")
//   {"cmd":"status","req":R}
//     -> {"type":"status","req":R,"clients":[{id,connected,sid,upstream,...}]}
//   {"cmd":"report","req":R,"events":"seq"|"full"|"none"}
//     -> {"type":"report","req":R,"clients":[...]} (see report() below)
//   {"cmd":"close"}  disconnect every client, then {"type":"closed"} and exit
//
// Live lines: connect {id,sid,recovered,n,upstream,offsetSent},
// disconnect {id,reason,lastOffset}, connect_error {id,message},
// proxy {id,upstream,event}, rejoined {id,n} (after a connect that was not
// recovered, once the rooms are joined again), error {message}.
import net from "node:net";
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { io } = require("socket.io-client");

const args = process.argv.slice(2);
const maxSeconds = Number(args[args.indexOf("--max-seconds") + 1] || 0) || 900;
const T0 = Date.now();

// This process's event-loop stalls (a timer late by more than 100 ms): a
// stalled loop reads a ping late and can time a healthy connection out.
const stalls = []; // [t, ms late]
let tick = Date.now();
setInterval(() => {
  const now = Date.now();
  const late = now - tick - 50;
  if (late > 100) {
    stalls.push([now, late]);
    if (stalls.length > 200) stalls.shift();
  }
  tick = now;
}, 50).unref();

function loopStallSince(t) {
  return stalls.filter(([at]) => at >= t).reduce((worst, [, late]) => Math.max(worst, late), 0);
}

function out(obj) {
  process.stdout.write(JSON.stringify({ t: Date.now(), ...obj }) + "\n");
}

// ---------------------------------------------------------------------------
// The proxy: one per client, so that every reconnect of the client can be
// routed to another dyno and its connections dropped on demand.
class Proxy {
  constructor(client) {
    this.client = client;
    this.index = 0;
    this.used = false;
    this.pairs = new Set();
    this.hung = new Set(); // blackholed upstream sockets the server has not closed
    this.server = net.createServer((down) => this.accept(down));
    this.server.on("error", (err) => out({ type: "error", id: client.id, message: String(err) }));
  }

  listen() {
    return new Promise((resolve) => {
      this.server.listen(0, "127.0.0.1", () => resolve(this.server.address().port));
    });
  }

  pick() {
    const { urls, policy } = this.client.spec;
    if (policy === "balance") {
      // the first connection to urls[0]; then, as one router in front of
      // the fleet, round robin over the dynos not marked down (all down:
      // over all of them, they refuse)
      if (!this.used) {
        this.used = true;
        return urls[0];
      }
      const live = urls.filter((u) => !downUpstreams.has(u));
      const pool = live.length ? live : urls;
      return pool[balanceTurn++ % pool.length];
    }
    if (policy !== "stay" && this.used) this.index = (this.index + 1) % urls.length;
    this.used = true;
    return urls[this.index];
  }

  accept(down) {
    down.pause();
    this.connectUp(down, this.pick(), 1);
  }

  connectUp(down, upstream, attempt) {
    const target = new URL(upstream);
    if (!["127.0.0.1", "localhost"].includes(target.hostname)) {
      down.destroy();
      out({ type: "error", id: this.client.id, message: `refusing non-loopback ${upstream}` });
      return;
    }
    const up = net.connect(Number(target.port), target.hostname);
    const pair = { down, up, upstream, state: "connecting" };
    this.pairs.add(pair);
    up.on("connect", () => {
      if (pair.state !== "connecting") return;
      pair.state = "open";
      down.pipe(up);
      up.pipe(down);
      down.resume();
    });
    up.on("error", (err) => {
      if (pair.state === "connecting") {
        out({ type: "proxy", id: this.client.id, upstream, event: err.code || String(err) });
        const { policy, urls } = this.client.spec;
        if (policy === "balance" && attempt < urls.length && !down.destroyed) {
          // a balancer tries another dyno for the same client connection
          pair.state = "retried";
          this.pairs.delete(pair);
          this.connectUp(down, this.pick(), attempt + 1);
          return;
        }
        // the dyno refuses: with either policy the next attempt tries the next one
        if (policy === "stay") {
          this.index = (this.index + 1) % urls.length;
        }
      }
    });
    up.on("close", () => {
      this.hung.delete(up);
      if (pair.state === "retried") return;
      if (pair.state !== "blackhole") {
        pair.state = "closed";
        down.destroy();
        this.pairs.delete(pair);
      }
    });
    down.on("error", () => {});
    down.on("close", () => {
      if (pair.state === "retried") return;
      this.pairs.delete(pair);
      if (pair.state !== "blackhole") {
        pair.state = "closed";
        up.destroy();
      }
      // blackholed: the upstream stays open until the server notices
    });
  }

  drop(mode) {
    let count = 0;
    for (const pair of [...this.pairs]) {
      if (pair.state === "closed" || pair.state === "blackhole") continue;
      count += 1;
      if (mode === "blackhole") {
        pair.state = "blackhole";
        pair.down.unpipe(pair.up);
        pair.up.unpipe(pair.down);
        pair.down.pause();
        pair.up.pause();
        this.hung.add(pair.up);
      } else {
        pair.state = "closed";
        pair.down.destroy();
        pair.up.destroy();
        this.pairs.delete(pair);
      }
    }
    return count;
  }

  currentUpstream() {
    for (const pair of this.pairs) if (pair.state === "open") return pair.upstream;
    return null;
  }

  close() {
    for (const pair of this.pairs) {
      pair.down.destroy();
      pair.up.destroy();
    }
    for (const up of this.hung) up.destroy();
    this.server.close();
  }
}

// ---------------------------------------------------------------------------
class Client {
  constructor(spec, options) {
    this.spec = { policy: "rotate", namespace: "/", rooms: [], ...spec };
    this.options = {
      reconnectionDelay: 300,
      reconnectionDelayMax: 2000,
      randomizationFactor: 0.5,
      rejoin: true,
      verifyRooms: false,
      reconnectOnServerDisconnect: true,
      ...options,
    };
    this.id = spec.id;
    this.proxy = new Proxy(this);
    this.events = []; // [t, event, args (offset removed), offset or null]
    this.connects = []; // {t, sid, recovered, upstream, offsetSent, rooms?}
    this.disconnects = []; // {t, reason, lastOffset}
    this.errors = [];
    this.firstSid = null;
    this.readyAt = null;
    this.closing = false;
  }

  async start() {
    const port = await this.proxy.listen();
    const ns = this.spec.namespace === "/" ? "" : this.spec.namespace;
    const o = this.options;
    this.socket = io(`http://127.0.0.1:${port}${ns}`, {
      transports: ["websocket"],
      auth: this.spec.auth || {},
      forceNew: true,
      reconnectionDelay: o.reconnectionDelay,
      reconnectionDelayMax: o.reconnectionDelayMax,
      randomizationFactor: o.randomizationFactor,
      timeout: 10000,
    });
    const socket = this.socket;
    if (o.pingTimeoutMs) {
      // the client's ping-timeout detection: pingInterval (the server's) + this
      socket.io.on("open", () => {
        socket.io.engine._pingTimeout = o.pingTimeoutMs;
      });
    }
    // For a disconnect's entry: how long since the server's last ping, the
    // longest gap between two pings of that connection.
    socket.io.on("open", () => {
      this.lastPing = Date.now();
      this.maxPingGap = 0;
      socket.io.engine.on("ping", () => {
        const now = Date.now();
        this.maxPingGap = Math.max(this.maxPingGap, now - this.lastPing);
        this.lastPing = now;
      });
    });
    socket.onAny((event, ...rest) => this.record(event, rest));
    socket.on("connect", () => this.onConnect());
    socket.on("disconnect", (reason) => this.onDisconnect(reason));
    socket.on("connect_error", (err) => {
      this.errors.push({ t: Date.now(), message: String(err && err.message) });
      out({ type: "connect_error", id: this.id, message: String(err && err.message) });
    });
  }

  record(event, rest) {
    // The client's own rule (socket.js emitEvent): with a pid, a string last
    // argument is the offset.
    let offset = null;
    let data = rest;
    if (this.socket._pid && rest.length && typeof rest[rest.length - 1] === "string") {
      offset = rest[rest.length - 1];
      data = rest.slice(0, -1);
    }
    this.events.push([Date.now(), event, data, offset]);
  }

  onConnect() {
    const socket = this.socket;
    const n = this.connects.length;
    const entry = {
      t: Date.now(),
      sid: socket.id,
      recovered: !!socket.recovered,
      pid: socket._pid || null,
      upstream: this.proxy.currentUpstream(),
      offsetSent: n > 0 ? this.offsetAtDisconnect ?? null : null,
      eventsBefore: this.events.length,
    };
    this.connects.push(entry);
    out({ type: "connect", id: this.id, n, sid: entry.sid, recovered: entry.recovered,
          upstream: entry.upstream, offsetSent: entry.offsetSent });
    if (n === 0) {
      this.firstSid = socket.id;
      this.join().then(() => {
        this.readyAt = Date.now();
        out({ type: "ready", id: this.id, sid: socket.id, upstream: entry.upstream });
      });
    } else {
      const rejoin = !entry.recovered && this.options.rejoin ? this.join() : Promise.resolve();
      if (!entry.recovered) {
        rejoin.then(() => {
          entry.joinedAt = Date.now();
          out({ type: "rejoined", id: this.id, n });
        }, () => {});
      }
      if (this.options.verifyRooms) {
        // asked before any rejoin could land when recovered: what the server restored
        this.ask("rooms", undefined).then((rooms) => {
          entry.rooms = rooms;
          out({ type: "rooms", id: this.id, n, rooms });
        });
      }
      rejoin.catch(() => {});
    }
  }

  onDisconnect(reason) {
    this.offsetAtDisconnect = this.socket._lastOffset ?? null;
    const now = Date.now();
    this.disconnects.push({
      t: now, reason, lastOffset: this.offsetAtDisconnect,
      sinceLastPing: this.lastPing ? now - this.lastPing : null,
      maxPingGap: this.maxPingGap ?? null,
      loopStall: loopStallSince(now - 10000), // this process's, in the last 10 s
    });
    out({ type: "disconnect", id: this.id, reason, lastOffset: this.offsetAtDisconnect });
    if (reason === "io server disconnect" && this.options.reconnectOnServerDisconnect &&
        !this.closing) {
      setTimeout(() => !this.closing && this.socket.connect(), this.options.reconnectionDelay);
    }
  }

  ask(event, data, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      const args = data === undefined ? [] : [data];
      this.socket.timeout(timeoutMs).emit(event, ...args, (err, answer) => {
        if (err) reject(err);
        else resolve(answer);
      });
    });
  }

  async join() {
    for (const room of this.spec.rooms) {
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          const answer = await this.ask("join", { room });
          if (answer === "ok") break;
        } catch (err) {
          if (this.closing) return;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  status() {
    const s = this.socket;
    return {
      id: this.id,
      connected: !!(s && s.connected),
      sid: s ? s.id ?? null : null,
      firstSid: this.firstSid,
      ready: this.readyAt !== null,
      upstream: this.proxy.currentUpstream(),
      connects: this.connects.length,
      disconnects: this.disconnects.length,
      events: this.events.length,
      lastOffset: s ? s._lastOffset ?? null : null,
    };
  }

  report(mode) {
    const base = {
      ...this.status(),
      spec: this.spec,
      readyAt: this.readyAt,
      connectLog: this.connects,
      disconnectLog: this.disconnects,
      errors: this.errors.slice(-20),
      errorCount: this.errors.length,
      withOffset: this.events.filter((e) => e[3] !== null).length,
    };
    if (mode === "full") base.eventLog = this.events;
    else if (mode !== "none") {
      // seq: [t, stream, n, offset] for payloads {st, n}; other events whole
      base.seq = [];
      base.other = [];
      for (const [t, event, data, offset] of this.events) {
        const p = data[0];
        if (p && typeof p === "object" && "st" in p && "n" in p) base.seq.push([t, p.st, p.n, offset]);
        else base.other.push([t, event, data, offset]);
      }
    }
    return base;
  }

  close() {
    this.closing = true;
    if (this.socket) this.socket.disconnect();
    this.proxy.close();
  }
}

// ---------------------------------------------------------------------------
const clients = new Map();
const downUpstreams = new Set(); // skipped by the balance policy
let balanceTurn = 0;

async function handle(msg) {
  switch (msg.cmd) {
    case "add": {
      const made = [];
      for (const spec of msg.clients) {
        if (clients.has(spec.id)) throw new Error(`client ${spec.id} exists`);
        const c = new Client(spec, msg.options || {});
        clients.set(spec.id, c);
        made.push(c);
      }
      await Promise.all(made.map((c) => c.start()));
      out({ type: "added", req: msg.req, ids: made.map((c) => c.id) });
      break;
    }
    case "drop": {
      const mode = msg.mode || "cut";
      let targets;
      if (msg.all) targets = [...clients.values()];
      else if (msg.upstream) targets = [...clients.values()].filter((c) => c.proxy.currentUpstream() === msg.upstream);
      else targets = (msg.ids || []).map((id) => clients.get(id)).filter(Boolean);
      let count = 0;
      const ids = [];
      for (const c of targets) {
        const n = c.proxy.drop(mode);
        if (n) ids.push(c.id);
        count += n;
      }
      out({ type: "dropped", req: msg.req, mode, count, ids });
      break;
    }
    case "emit": {
      const c = clients.get(msg.id);
      try {
        const answer = await c.ask(msg.event, msg.data, msg.timeoutMs || 15000);
        out({ type: "reply", req: msg.req, id: msg.id, answer });
      } catch (err) {
        out({ type: "reply", req: msg.req, id: msg.id, error: String(err && err.message) });
      }
      break;
    }
    case "upstreams":
      downUpstreams.clear();
      for (const url of msg.down || []) downUpstreams.add(url);
      out({ type: "upstreams", req: msg.req, down: [...downUpstreams] });
      break;
    case "status":
      out({ type: "status", req: msg.req, clients: [...clients.values()].map((c) => c.status()) });
      break;
    case "report":
      out({ type: "report", req: msg.req, t0: T0,
            clients: [...clients.values()].map((c) => c.report(msg.events || "seq")) });
      break;
    case "close":
      shutdown(0);
      break;
    default:
      throw new Error(`unknown command ${msg.cmd}`);
  }
}

let closing = false;
function shutdown(code) {
  if (closing) return;
  closing = true;
  for (const c of clients.values()) c.close();
  out({ type: "closed" });
  // let the close frames and stdout drain
  setTimeout(() => process.exit(code), 200).unref();
  setTimeout(() => process.exit(code), 200);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    out({ type: "error", message: `bad command: ${line.slice(0, 200)}` });
    return;
  }
  handle(msg).catch((err) => out({ type: "error", req: msg.req, message: String(err && err.stack || err) }));
});
rl.on("close", () => shutdown(0));
setTimeout(() => {
  out({ type: "error", message: `--max-seconds ${maxSeconds} reached` });
  shutdown(3);
}, maxSeconds * 1000);
process.on("SIGTERM", () => shutdown(0));
out({ type: "started", pid: process.pid, node: process.version });
