'use strict';
// Plain static files: no build step. Talks to the backend under /api/.
async function load() {
  const r = await fetch('/api/notes');
  const body = await r.json();
  document.getElementById('title').textContent = body.title;
  const list = document.getElementById('notes');
  list.replaceChildren(...body.notes.map((n) => Object.assign(document.createElement('li'), { textContent: n.title })));
}
document.getElementById('add').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = document.getElementById('new');
  await fetch('/api/notes', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ title: input.value }) });
  input.value = '';
  load();
});
load();
