// A Node.js Socket.IO 4.8 server with connection state recovery (the
// in-memory adapter): the reference the CSR driver (csr_clients.mjs) and the
// restart counting are checked against, with no Kafka and no Python server.
//
//   node tests/js/reference_server.mjs --port P [--recovery 1] [--max-seconds 300]
//
// It speaks the parts of tests/server_app.py the driver uses: the connect
// handler joins `user:<auth.user>`, "join" {room} -> "ok", "rooms" -> the
// rooms but the sid. Its stdin takes JSON lines:
//   {"cmd":"streams","streams":{"all":null,"room:r0":"r0","sid:c0":"<sid>"},"rate":10}
//       emit {"st": stream, "n": seq} to each target, rate times a second
//   {"cmd":"stop"}   stop emitting; answers {"type":"emitted","emitted":{...}}
// and prints {"type":"listening","port":P} once it listens. It exits when
// stdin closes or after --max-seconds.
import http from "node:http";
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { Server } = require("socket.io");

const argv = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : fallback;
};
const port = Number(arg("--port", "0"));
const recovery = arg("--recovery", "1") === "1";
const maxSeconds = Number(arg("--max-seconds", "300"));

const out = (obj) => process.stdout.write(JSON.stringify({ t: Date.now(), ...obj }) + "\n");

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  pingInterval: Number(arg("--ping-interval", "25000")),
  pingTimeout: Number(arg("--ping-timeout", "20000")),
  ...(recovery ? { connectionStateRecovery: { maxDisconnectionDuration: 120000 } } : {}),
});

io.on("connection", (socket) => {
  const auth = socket.handshake.auth || {};
  if (!socket.recovered && auth.user) socket.join(`user:${auth.user}`);
  socket.on("join", (msg, ack) => {
    socket.join(msg.room);
    ack("ok");
  });
  socket.on("rooms", (ack) => ack([...socket.rooms].filter((r) => r !== socket.id).sort()));
});

let timer = null;
const emitted = {};

function startStreams(streams, rate) {
  for (const name of Object.keys(streams)) emitted[name] = emitted[name] || 0;
  timer = setInterval(() => {
    for (const [name, target] of Object.entries(streams)) {
      const payload = { st: name, n: emitted[name]++ };
      if (target === null) io.emit("m", payload);
      else io.to(target).emit("m", payload);
    }
  }, 1000 / rate);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const msg = JSON.parse(line);
  if (msg.cmd === "streams") {
    startStreams(msg.streams, msg.rate || 10);
    out({ type: "streaming", req: msg.req });
  } else if (msg.cmd === "stop") {
    clearInterval(timer);
    out({ type: "emitted", req: msg.req, emitted });
  }
});
const exit = () => {
  io.close();
  setTimeout(() => process.exit(0), 100);
};
rl.on("close", exit);
setTimeout(exit, maxSeconds * 1000);
httpServer.listen(port, "127.0.0.1", () => out({ type: "listening", port: httpServer.address().port }));
