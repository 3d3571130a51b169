// A request handler that pegs its event loop: it re-parses and re-sorts a large JSON
// document on every "request".
const doc = JSON.stringify(Array.from({ length: 20000 }, (_, i) => ({ id: i, name: `user${i}`, score: (i * 7919) % 1000 })));
function rankUsers(text) {
  const users = JSON.parse(text);
  users.sort((a, b) => b.score - a.score || a.name.localeCompare(b.name));
  return users.slice(0, 10);
}
function handleRequest() { return rankUsers(doc); }
setInterval(() => {}, 1000);
for (;;) handleRequest();
