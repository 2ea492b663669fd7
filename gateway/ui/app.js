// The live mesh dashboard (served by the gateway at /ui/; see gateway/src/dashboard.rs).
// Signs in through the users service's JSON route (or takes a token, also from the URL fragment
// `#token=…&project=…`), polls /ui/api/status every 2 s (services, instances, routes, request
// counts), and follows a project's events through the WebSocket bridge, resuming from its last
// cursor when the socket closes. Everything is drawn with textContent: nothing the mesh says is
// parsed as HTML.
'use strict';

const POLL_MS = 2000;
const MAX_EVENTS = 200;

const state = {
  token: null,
  previous: null, // { at, counts } of the last status
  socket: null,
  project: '',
  cursor: '',
  retryMs: 500,
  retryTimer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setToken(token) {
  state.token = token;
  sessionStorage.setItem('protomesh.token', token);
  $('signin').hidden = true;
  $('board').hidden = false;
  $('who').textContent = 'signed in';
  poll();
}

async function login() {
  $('signin-error').textContent = '';
  try {
    const answer = await fetch('/v1/auth:login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: $('email').value, password: $('password').value }),
    });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.message || answer.statusText);
    setToken(body.accessToken);
  } catch (err) {
    $('signin-error').textContent = `sign-in failed: ${err.message}`;
  }
}

// gateway_http_requests_total lines → Map("METHOD route" → {total, c4, c5}).
function parseCounts(text) {
  const counts = new Map();
  // Templates hold braces ({id}): the labels run to the last `} ` of the line.
  const line = /^gateway_http_requests_total\{(.*)\} ([0-9.e+]+)$/;
  for (const row of (text || '').split('\n')) {
    const m = line.exec(row);
    if (!m) continue;
    const labels = {};
    for (const pair of m[1].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    const key = `${labels.method} ${labels.route}`;
    const entry = counts.get(key) || { total: 0, c4: 0, c5: 0 };
    const n = Number(m[2]);
    const code = Number(labels.code);
    entry.total += n;
    if (code >= 400 && code < 500) entry.c4 += n;
    if (code >= 500) entry.c5 += n;
    counts.set(key, entry);
  }
  return counts;
}

function renderServices(services) {
  const body = $('services').tBodies[0];
  body.replaceChildren();
  for (const service of services) {
    const instances = el('td');
    if (service.instances) {
      if (service.instances.length === 0) instances.append(el('span', { class: 'badge critical' }, 'no instance'));
      for (const instance of service.instances) {
        const failing = instance.checks.filter((c) => c.status !== 'passing').map((c) => `${c.name}: ${c.output}`);
        instances.append(el('span', { class: `badge ${instance.status}`, title: failing.join('\n') || 'every check passing' },
          `${instance.address} ${instance.status}`));
      }
    } else {
      instances.append(el('span', { class: 'muted' }, service.instances_error || 'unknown'));
    }
    const name = el('td', {}, service.name);
    if (service.state !== 'routed') name.append(' ', el('span', { class: 'badge unreachable', title: service.reason || '' }, service.state));
    body.append(el('tr', { 'data-service': service.name }, name, el('td', { class: 'num' },
      service.routes ?? ''), instances));
  }
}

function renderRoutes(routes, requests) {
  const now = Date.now();
  const counts = requests == null ? null : parseCounts(requests);
  $('metrics-note').textContent = counts == null ? 'metrics are off: start the gateway with --admin to record them' : '';
  const body = $('routes').tBodies[0];
  body.replaceChildren();
  for (const route of routes) {
    const key = `${route.method} ${route.path}`;
    const count = counts?.get(key) || { total: 0, c4: 0, c5: 0 };
    const before = state.previous?.counts?.get(key);
    const seconds = state.previous ? (now - state.previous.at) / 1000 : 0;
    const rate = before && seconds > 0 ? ((count.total - before.total) / seconds).toFixed(1) : '–';
    body.append(el('tr', { 'data-route': key }, el('td', {}, route.method), el('td', { title: route.rpc }, route.path),
      el('td', {}, route.service), el('td', { class: 'num' }, rate), el('td', { class: 'num' }, count.total),
      el('td', { class: 'num' }, count.c4), el('td', { class: 'num' }, count.c5)));
  }
  if (counts) state.previous = { at: now, counts };
}

async function poll() {
  try {
    const answer = await fetch('/ui/api/status', { headers: { authorization: `Bearer ${state.token}` } });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.message || answer.statusText);
    const routesPerService = new Map();
    for (const route of body.routes) routesPerService.set(route.service, (routesPerService.get(route.service) || 0) + 1);
    for (const service of body.services) service.routes = routesPerService.get(service.name) || 0;
    renderServices(body.services);
    renderRoutes(body.routes, body.requests);
    $('status-error').textContent = '';
    $('status-age').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $('status-error').textContent = `status: ${err.message}`;
  }
  setTimeout(poll, POLL_MS);
}

function setFeedStatus(text, kind) {
  const badge = $('feed-status');
  badge.textContent = text;
  badge.className = `badge ${kind || text}`;
}

function describe(event) {
  const data = event.data || {};
  if (event.type === 'message') return `${data.sender}: ${typeof data.body === 'string' ? data.body : JSON.stringify(data.body)}`;
  if (event.type.startsWith('presence.')) return `${data.subject}`;
  if (event.type === 'resumed') return data.note;
  if (event.type.startsWith('task.')) return `${data.title ?? ''} (${data.status ?? ''}, priority ${data.priority_score ?? data.priorityScore ?? '?'}) ${data.id ?? ''}`;
  return JSON.stringify(data);
}

function showEvent(event) {
  const time = event.createdAt ? new Date(event.createdAt).toLocaleTimeString() : '';
  const item = el('li', { 'data-type': event.type }, el('span', { class: 'time' }, time),
    el('span', { class: 'type' }, event.type), describe(event));
  const feed = $('feed');
  feed.prepend(item);
  while (feed.children.length > MAX_EVENTS) feed.lastElementChild.remove();
}

function follow(project) {
  if (state.socket) { state.socket.onclose = null; state.socket.close(1000); }
  clearTimeout(state.retryTimer);
  if (project !== state.project) { state.project = project; state.cursor = ''; $('feed').replaceChildren(); }
  if (!project) { setFeedStatus('idle'); return; }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let url = `${scheme}//${location.host}/v1/hub/events?topics=${encodeURIComponent(`project/${project}`)}`;
  if (state.cursor) url += `&after=${encodeURIComponent(state.cursor)}`;
  setFeedStatus('connecting', 'reconnecting');
  const socket = new WebSocket(url, ['protomesh.json', `bearer.${state.token}`]);
  state.socket = socket;
  let refusal = null;
  socket.onopen = () => { state.retryMs = 500; setFeedStatus('live'); };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.error) { refusal = event.error; return; }
    state.cursor = event.cursor;
    showEvent(event);
  };
  socket.onclose = (close) => {
    if (state.socket !== socket) return;
    // 4011: the cursor is past the streams' retention; 4003 with a cursor: it is not one (any
    // more). Follow from now on.
    if (close.code === 4011 || (close.code === 4003 && state.cursor)) {
      state.cursor = '';
      showEvent({ type: 'resumed', data: { note: 'some events were missed: following from now on' } });
      state.retryTimer = setTimeout(() => follow(state.project), 0);
      return;
    }
    // 4000 + a gRPC code: 3 invalid, 5 not found, 7 denied, 16 unauthenticated are final.
    if ([4003, 4005, 4007, 4016].includes(close.code)) {
      setFeedStatus(`refused: ${refusal?.message || close.reason}`, 'refused');
      return;
    }
    setFeedStatus('reconnecting');
    state.retryTimer = setTimeout(() => follow(state.project), state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 10000);
  };
}

window.addEventListener('DOMContentLoaded', () => {
  $('login').addEventListener('click', login);
  $('use-token').addEventListener('click', () => setToken($('token').value.trim()));
  $('follow').addEventListener('click', () => follow($('project').value.trim()));
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get('token') || sessionStorage.getItem('protomesh.token');
  if (fragment.get('token')) history.replaceState(null, '', location.pathname);
  if (token) setToken(token);
  const project = fragment.get('project');
  if (project && token) { $('project').value = project; follow(project); }
});
