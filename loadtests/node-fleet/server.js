// One Node.js Socket.IO 4.8 server of a cluster on the Redis streams adapter
// (socket.io-adapter's ClusterAdapterWithHeartbeat): the reference that
// bench_fleet_queries.py --node compares the fleet API with. PORT and
// REDIS_URL from the environment; GET /fetch times io.fetchSockets(), GET
// /emit times io.serverSideEmitWithAck("ping"), on this server.
const http = require("http");
const { performance } = require("perf_hooks");
const { createClient } = require("redis");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

async function main() {
  const redis = createClient({ url: process.env.REDIS_URL });
  await redis.connect();
  const httpServer = http.createServer(async (req, res) => {
    try {
      const started = performance.now();
      let n;
      if (req.url === "/fetch") {
        n = (await io.fetchSockets()).length;
      } else if (req.url === "/emit") {
        n = (await io.serverSideEmitWithAck("ping")).length;
      } else {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ n, ms: performance.now() - started }));
    } catch (err) {
      res.writeHead(500).end(String(err));
    }
  });
  const io = new Server(httpServer, { adapter: createAdapter(redis), transports: ["websocket"] });
  io.on("ping", (callback) => callback("pong"));
  httpServer.listen(Number(process.env.PORT), "127.0.0.1");
}

main();
