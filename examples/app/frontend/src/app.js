// Example app client: talks to the backend through nginx's /api/ proxy.
'use strict';

async function getJson(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    throw new Error(path + ': HTTP ' + response.status);
  }
  return response.json();
}

async function refresh() {
  try {
    const info = await getJson('/api/info');
    document.getElementById('info').textContent = info.greeting + ' (release ' + info.version + ')';
    const health = await getJson('/api/health');
    document.getElementById('health').textContent = 'database: ' + health.database;
    const notes = await getJson('/api/notes');
    const list = document.getElementById('notes');
    list.replaceChildren();
    for (const note of notes.notes) {
      const item = document.createElement('li');
      item.textContent = note.body;
      list.appendChild(item);
    }
  } catch (error) {
    document.getElementById('info').textContent = 'Backend unavailable: ' + error.message;
  }
}

document.getElementById('note-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.getElementById('note-body');
  await getJson('/api/notes', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ body: input.value }),
  });
  input.value = '';
  await refresh();
});

refresh();
