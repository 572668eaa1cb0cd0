// The chat page: one Socket.IO connection to the dyno that served the page.
(function () {
  const $ = (id) => document.getElementById(id);
  let socket;

  function show(kind, text, meta) {
    const li = document.createElement("li");
    li.className = kind;
    li.textContent = text;
    if (meta) {
      const span = document.createElement("span");
      span.className = "meta";
      span.textContent = "  " + meta;
      li.appendChild(span);
    }
    $("log").prepend(li);
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    // websocket only: several dynos behind one address need no sticky sessions.
    // csr: this tab reads recovery offsets from its first connection on, so
    // even its first drop is recovered exactly (see the README).
    socket = io({ transports: ["websocket"], auth: { name: $("name").value.trim(), csr: true } });
    socket.on("welcome", (me) => {
      $("login").hidden = true;
      $("chat").hidden = false;
      $("me").textContent = `You are ${me.name}, on dyno ${me.dyno}; your connection id is ${me.sid}`;
      $("me").dataset.sid = me.sid;
      $("me").dataset.dyno = me.dyno;
    });
    socket.on("connect", () => {
      if (socket.recovered) {
        show("recovered", `recovered: connection ${socket.id} kept, missed lines delivered`);
      }
    });
    socket.on("disconnect", (reason) => show("error", `disconnected (${reason}); reconnecting…`));
    socket.on("line", (line) => {
      const where = line.kind === "private" ? `private to ${line.to}`
        : line.kind === "all" ? "everyone" : line.room;
      show(line.kind, `[${where}] ${line.from}: ${line.text}`, `sent from dyno ${line.dyno}`);
    });
    socket.on("connect_error", (err) => show("error", `cannot connect: ${err.message}`));
  });

  // Who is in the room on every dyno (fetch_sockets), and the dynos alive.
  function who() {
    if (!socket || !socket.connected) return;
    socket.emit("who", { room: room() }, (answer) => {
      $("dynos").textContent = `${answer.dynos} dyno(s) alive · ${answer.members.length} ` +
        `in ${answer.room}` + (answer.partial ? " (a dyno did not answer)" : "");
      $("members").replaceChildren(...answer.members.map((m) => {
        const li = document.createElement("li");
        li.textContent = `${m.name} on dyno ${m.dyno}`;
        li.title = m.sid;
        return li;
      }));
    });
  }
  setInterval(who, 10000);

  const room = () => $("room").value.trim();
  const text = () => { const t = $("text").value; $("text").value = ""; return t; };
  $("join").onclick = () => { socket.emit("join", { room: room() }); setTimeout(who, 300); };
  $("leave").onclick = () => { socket.emit("leave", { room: room() }); setTimeout(who, 300); };
  $("who").onclick = who;
  $("say").onclick = () => socket.emit("say", { room: room(), text: text() });
  $("shout").onclick = () => socket.emit("shout", { text: text() });
  $("whisper").onclick = () => socket.emit("whisper", { to: $("to").value.trim(), text: text() });
  $("pull").onclick = () => socket.emit("pull", { sid: $("pull-sid").value.trim(), room: room() },
    (answer) => { if (!answer.ok) show("error", answer.error); });
})();
