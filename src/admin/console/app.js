// The gateway's operator console. Plain DOM, no framework, no inline script (the page's
// CSP forbids it). Everything shown is set as text, never parsed as HTML: event fields
// (paths, user agents, messages) come from attackers.
'use strict';

const S = { me: null, csrf: '', tokens: [], timer: null, busy: false };
const RANK = { viewer: 0, operator: 1, admin: 2 };
const RISKS = ['low', 'medium', 'high', 'critical'];
const $ = (id) => document.getElementById(id);
const can = (role) => S.me && RANK[S.me.role] >= RANK[role];

// h('tag', {attr: v, onclick: f}, child, ...): an element; strings become text nodes.
function h(tag, attrs, ...kids) {
  const svg = ['svg', 'rect', 'line', 'polyline', 'circle', 'text', 'g', 'title'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of kids.flat(3)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

async function call(method, url, body) {
  const opt = { method, credentials: 'same-origin', headers: {} };
  if (method !== 'GET') opt.headers['X-CSRF-Token'] = S.csrf;
  if (body !== undefined) {
    opt.headers['Content-Type'] = 'application/json';
    opt.body = JSON.stringify(body);
  }
  const r = await fetch(url, opt);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && url.startsWith('/api/')) {
    signedOut();
    throw new Error('signed out');
  }
  if (!r.ok) throw new Error((data && data.error) || ('HTTP ' + r.status));
  return data;
}
const api = (method, path, body) => call(method, '/api/v1' + path, body);

function time(t) {
  if (!t) return '';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}
const risk = (r) => h('span', { class: 'risk ' + r }, r);
const enc = encodeURIComponent;

function say(text, ok) {
  const s = $('status');
  s.textContent = text;
  s.className = ok ? 'ok' : 'error';
}

// A button that runs `f`, shows its error, then re-renders the page.
function action(label, f, cls, id) {
  return h('button', {
    type: 'button', class: cls, id,
    onclick: async (e) => {
      e.target.disabled = true;
      try { await f(); say(label + ': done', true); } catch (err) { say(label + ': ' + err.message); }
      e.target.disabled = false;
      render();
    },
  }, label);
}

function table(cols, rows, onrow) {
  return h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', {}, c[0])))),
    h('tbody', {}, rows.map((r) => h('tr', onrow ? { class: 'link', onclick: () => onrow(r) } : {},
      cols.map((c) => h('td', c[2] ? { class: c[2] } : {}, c[1](r)))))));
}

function card(label, n, id) {
  return h('div', { class: 'card' }, h('div', { class: 'n', id }, String(n)), h('div', { class: 'l' }, label));
}

// Horizontal bars: [{key, count}].
function bars(items, keyName, id) {
  if (!items.length) return h('p', { class: 'muted' }, 'none');
  const max = Math.max(...items.map((i) => i.count));
  return h('div', { class: 'bars', id }, items.map((i) => {
    const bar = h('div', { class: 'bar' });
    bar.style.width = Math.max(2, Math.round(260 * i.count / max)) + 'px';
    return h('div', { class: 'row' }, h('span', { class: 'key' }, i[keyName]), bar, h('span', {}, String(i.count)));
  }));
}

// Stacked columns per bucket, one colour per risk.
function riskChart(tl) {
  const W = 760, H = 170, pad = 24, n = tl.buckets.length || 1;
  const tot = tl.buckets.map((b) => RISKS.reduce((a, r) => a + b[r], 0));
  const max = Math.max(1, ...tot);
  const bw = (W - pad) / n;
  const svg = h('svg', { viewBox: `0 0 ${W} ${H + 18}`, width: '100%', id: 'risk-chart', role: 'img' },
    h('title', {}, 'events by risk over time'),
    h('line', { x1: pad, y1: H, x2: W, y2: H, stroke: '#d9dde5' }),
    h('text', { x: 0, y: 10 }, String(max)));
  const colors = { low: '#8fb4f0', medium: '#f2c14e', high: '#f08a4b', critical: '#d64045' };
  tl.buckets.forEach((b, i) => {
    let y = H;
    for (const r of RISKS) {
      const bh = (H - 12) * b[r] / max;
      if (bh > 0) {
        y -= bh;
        svg.append(h('rect', { x: pad + i * bw + 1, y, width: Math.max(1, bw - 2), height: bh, fill: colors[r] },
          h('title', {}, `${time(b.start)}: ${b[r]} ${r}`)));
      }
    }
    if (i % Math.ceil(n / 6) === 0) {
      svg.append(h('text', { x: pad + i * bw, y: H + 14 }, new Date(b.start).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })));
    }
  });
  return h('div', {}, svg, h('div', { class: 'legend' }, RISKS.map((r) => h('span', {}, h('i', { class: 'risk ' + r }), r))));
}

// Lines of p50/p95/p99 latency over a route's buckets.
function latencyChart(buckets) {
  const W = 760, H = 170, pad = 34, n = Math.max(buckets.length, 2);
  const max = Math.max(1, ...buckets.map((b) => b.p99_ms));
  const x = (i) => pad + i * (W - pad) / (n - 1);
  const y = (v) => H - (H - 12) * v / max;
  const svg = h('svg', { viewBox: `0 0 ${W} ${H + 18}`, width: '100%', id: 'latency-chart', role: 'img' },
    h('title', {}, 'latency percentiles'),
    h('line', { x1: pad, y1: H, x2: W, y2: H, stroke: '#d9dde5' }),
    h('text', { x: 0, y: 10 }, max.toFixed(1) + ' ms'));
  const series = [['p50_ms', '#2563eb'], ['p95_ms', '#f08a4b'], ['p99_ms', '#d64045']];
  for (const [k, c] of series) {
    svg.append(h('polyline', { fill: 'none', stroke: c, 'stroke-width': 2, points: buckets.map((b, i) => `${x(i)},${y(b[k])}`).join(' ') }));
    buckets.forEach((b, i) => svg.append(h('circle', { cx: x(i), cy: y(b[k]), r: 3, fill: c },
      h('title', {}, `${time(b.start)}: ${k.replace('_ms', '')} ${b[k]} ms over ${b.count} requests${b.partial ? ' (minute still open)' : ''}`))));
  }
  buckets.forEach((b, i) => {
    if (i % Math.ceil(n / 6) === 0) svg.append(h('text', { x: x(i) - 10, y: H + 14 }, new Date(b.start).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })));
  });
  return h('div', {}, svg, h('div', { class: 'legend' }, h('span', {}, 'p50 (blue)'), h('span', {}, 'p95 (orange)'), h('span', {}, 'p99 (red)')));
}

// ---- pages ----

async function overview() {
  const [st, bans, locks] = await Promise.all([api('GET', '/stats'), api('GET', '/bans'), api('GET', '/login-locks')]);
  const dropped = Object.values(st.events_dropped).reduce((a, b) => a + b, 0);
  return [
    h('h1', {}, 'Security overview ', h('span', { class: 'muted' }, 'last 24 hours')),
    h('div', { class: 'cards' },
      card('events', st.total, 'stat-total'),
      card('open high and critical', st.open_high_and_critical, 'stat-open-severe'),
      card('WAF blocks', st.by_type.waf_blocked || 0, 'stat-waf'),
      card('active bans', bans.items.length, 'stat-bans'),
      card('login locks', locks.count, 'stat-locks'),
      card('slow requests', st.performance_events, 'stat-slow'),
      card('events dropped', dropped, 'stat-dropped')),
    h('h2', {}, 'Events by risk'),
    h('div', { class: 'panel' }, riskChart(st.timeline)),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'Top blocked addresses'), bars(st.top_blocked_ips, 'ip', 'top-ips')),
      h('div', { class: 'panel' }, h('h2', {}, 'WAF rules hit'), bars(st.top_rules, 'rule', 'top-rules'))),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'By type'),
        bars(Object.entries(st.by_type).map(([k, v]) => ({ type: k, count: v })).sort((a, b) => b.count - a.count), 'type')),
      h('div', { class: 'panel' }, h('h2', {}, 'Backup and archive failures'),
        st.task_failures.length ? table([['time', (e) => time(e.time)], ['message', (e) => e.message, 'msg']], st.task_failures) : h('p', { class: 'muted' }, 'none'))),
  ];
}

const F = { status: 'open', risk: '', type: '', ip: '' };
async function investigations() {
  const q = Object.entries(F).filter(([, v]) => v).map(([k, v]) => `${k}=${enc(v)}`).join('&');
  const list = await api('GET', '/events?limit=100' + (q ? '&' + q : ''));
  const sel = (name, opts) => h('label', {}, name, h('select', {
    id: 'filter-' + name,
    onchange: (e) => { F[name] = e.target.value; render(); },
  }, opts.map((o) => h('option', { value: o, selected: F[name] === o }, o || 'any'))));
  const text = (name) => h('label', {}, name, h('input', {
    id: 'filter-' + name, value: F[name], placeholder: 'any',
    onchange: (e) => { F[name] = e.target.value.trim(); render(); },
  }));
  return [
    h('h1', {}, 'Investigations'),
    h('div', { class: 'toolbar' },
      sel('status', ['', 'open', 'investigating', 'resolved', 'false_positive']),
      sel('risk', ['', ...RISKS]), text('type'), text('ip')),
    h('div', { class: 'panel' }, table([
      ['time', (e) => time(e.time)], ['risk', (e) => risk(e.risk)], ['type', (e) => e.type],
      ['address', (e) => e.client_ip || ''], ['message', (e) => e.message, 'msg'],
      ['status', (e) => e.investigation.status], ['assignee', (e) => e.investigation.assignee || ''],
    ], list.items, (e) => { location.hash = '#event/' + e.id; })),
    h('p', { class: 'muted', id: 'event-count' }, `${list.count} shown`),
  ];
}

async function eventPage(id) {
  const e = await api('GET', '/events/' + enc(id));
  const inv = e.investigation;
  const fields = ['id', 'time', 'type', 'risk', 'client_ip', 'method', 'path', 'route', 'user', 'session', 'request_id', 'message'];
  const out = [
    h('p', {}, h('a', { href: '#investigations' }, '← investigations')),
    h('h1', {}, e.type, ' ', risk(e.risk)),
    h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'Event'), h('dl', {},
        fields.filter((f) => e[f]).map((f) => [h('dt', {}, f), h('dd', {}, f === 'time' ? time(e[f]) : String(e[f]))]),
        (e.rule_ids || []).length ? [h('dt', {}, 'rules'), h('dd', {}, e.rule_ids.join(', '))] : null,
        Object.entries(e.details || {}).map(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]))),
      h('div', { class: 'panel' }, h('h2', {}, 'Investigation'), h('dl', {},
        h('dt', {}, 'status'), h('dd', { id: 'inv-status' }, inv.status),
        h('dt', {}, 'assignee'), h('dd', { id: 'inv-assignee' }, inv.assignee || '—'),
        inv.resolved_by ? [h('dt', {}, 'resolved by'), h('dd', {}, inv.resolved_by)] : null),
      h('h2', {}, 'Notes'),
      (inv.notes || []).length ? h('ul', { id: 'inv-notes' }, inv.notes.map((n) => h('li', {}, `${time(n.at)} ${n.by}: `, n.text))) : h('p', { class: 'muted' }, 'none'),
      can('operator') ? investigationForm(e) : null)),
    h('h2', {}, 'Related events'),
    h('div', { class: 'panel' }, table([
      ['time', (r) => time(r.time)], ['risk', (r) => risk(r.risk)], ['type', (r) => r.type], ['message', (r) => r.message, 'msg'],
    ], e.related || [], (r) => { location.hash = '#event/' + r.id; })),
    h('h2', {}, 'History'),
    h('div', { class: 'panel' }, table([
      ['time', (c) => time(c.at)], ['by', (c) => c.by], ['field', (c) => c.field], ['from', (c) => c.from || ''], ['to', (c) => c.to],
    ], inv.history || [])),
  ];
  return out;
}

function investigationForm(e) {
  const next = { open: ['investigating'], investigating: ['resolved', 'false_positive'], resolved: ['investigating'], false_positive: ['investigating'] }[e.investigation.status] || [];
  const status = h('select', { id: 'inv-next' }, h('option', { value: '' }, '(keep status)'), next.map((s) => h('option', { value: s }, s)));
  const note = h('textarea', { id: 'inv-note', placeholder: 'note (required to resolve or mark a false positive)' });
  return h('div', {},
    h('h2', {}, 'Act'),
    action('Assign to me', () => api('PATCH', '/events/' + e.id, { assignee: 'me' }), 'secondary', 'assign-me'),
    ' ',
    h('div', {}, status), h('div', {}, note),
    action('Apply', () => {
      const body = {};
      if (status.value) body.status = status.value;
      if (note.value.trim()) body.note = note.value.trim();
      return api('PATCH', '/events/' + e.id, body);
    }, '', 'inv-apply'));
}

const SF = { user: '' };
async function sessions() {
  const q = SF.user ? '&user=' + enc(SF.user) : '';
  const [stats, list, locks] = await Promise.all([api('GET', '/sessions/stats'), api('GET', '/sessions?active=true&limit=200' + q), api('GET', '/login-locks')]);
  return [
    h('h1', {}, 'Sessions'),
    h('div', { class: 'cards' },
      card('active', stats.active, 'sessions-active'), card('suspicious', stats.suspicious, 'sessions-suspicious'),
      card('tracked', stats.tracked), card('login locks', stats.login_locks)),
    h('div', { class: 'toolbar' }, h('label', {}, 'user', h('input', {
      id: 'filter-user', value: SF.user, placeholder: 'any',
      onchange: (e) => { SF.user = e.target.value.trim(); render(); },
    })), SF.user && can('operator') ? action(`Log out every session of ${SF.user}`, () => api('DELETE', `/users/${enc(SF.user)}/sessions`), 'danger') : null),
    h('div', { class: 'panel' }, table([
      ['user', (s) => s.user || ''], ['app', (s) => s.app], ['address', (s) => s.client_ip],
      ['created', (s) => time(s.created)], ['last activity', (s) => time(s.last_activity)],
      ['suspicious', (s) => (s.suspicious ? 'yes' : '')], ['user agent', (s) => s.user_agent || '', 'msg'],
      ['', (s) => (can('operator') ? action('Force logout', () => api('DELETE', '/sessions/' + s.id), 'danger', 'logout-' + s.id) : '')],
    ], list.items)),
    h('h2', {}, 'Login locks'),
    h('div', { class: 'panel' }, locks.items.length ? table([
      ['app', (l) => l.app], ['user', (l) => l.user], ['until', (l) => time(l.until)],
      ['', (l) => (can('operator') ? action('Unlock', () => api('DELETE', `/users/${enc(l.user)}/lock`), 'secondary') : '')],
    ], locks.items) : h('p', { class: 'muted' }, 'none')),
  ];
}

async function ipControl() {
  const [rules, bans] = await Promise.all([api('GET', '/ip-rules'), api('GET', '/bans')]);
  const f = {
    action: h('select', { id: 'rule-action' }, h('option', {}, 'deny'), h('option', {}, 'allow')),
    cidr: h('input', { id: 'rule-cidr', placeholder: '203.0.113.0/24' }),
    priority: h('input', { id: 'rule-priority', type: 'number', placeholder: 'priority' }),
    comment: h('input', { id: 'rule-comment', placeholder: 'comment' }),
  };
  const t = { ip: h('input', { id: 'test-ip', placeholder: '192.0.2.1' }), path: h('input', { id: 'test-path', value: '/' }) };
  const result = h('span', { id: 'test-result' });
  const b = { ip: h('input', { id: 'ban-ip', placeholder: '192.0.2.7' }), duration: h('input', { id: 'ban-duration', value: '1h' }), reason: h('input', { id: 'ban-reason', placeholder: 'reason' }) };
  return [
    h('h1', {}, 'IP control'),
    h('div', { class: 'panel' }, h('h2', {}, `Rules (default: ${rules.default})`), table([
      ['id', (r) => r.id], ['action', (r) => r.action], ['cidr', (r) => r.cidr], ['priority', (r) => r.priority ?? ''],
      ['scope', (r) => [...(r.routes || []), ...(r.hosts || []), ...(r.path_prefixes || [])].join(' ')],
      ['source', (r) => r.source], ['requests', (r) => r.requests], ['comment', (r) => r.comment || '', 'msg'],
      ['', (r) => (can('operator') && r.source === 'api' ? action('Delete', () => api('DELETE', '/ip-rules/' + enc(r.id)), 'danger') : '')],
    ], rules.rules),
    can('operator') ? h('div', { class: 'toolbar', id: 'rule-form' },
      h('label', {}, 'action', f.action), h('label', {}, 'cidr', f.cidr), h('label', {}, 'priority', f.priority), h('label', {}, 'comment', f.comment),
      action('Add rule', () => {
        const body = { action: f.action.value, cidr: f.cidr.value.trim() };
        if (f.priority.value) body.priority = Number(f.priority.value);
        if (f.comment.value.trim()) body.comment = f.comment.value.trim();
        return api('POST', '/ip-rules', body);
      }, '', 'rule-add')) : null),
    h('div', { class: 'panel' }, h('h2', {}, 'Test an address'), h('div', { class: 'toolbar' },
      h('label', {}, 'address', t.ip), h('label', {}, 'path', t.path),
      h('button', {
        type: 'button', id: 'test-run',
        onclick: async () => {
          try {
            const r = await api('POST', '/ip-rules/test', { ip: t.ip.value.trim(), path: t.path.value || '/' });
            result.textContent = `${r.decision} (${r.decided_by}${r.rule ? ': ' + r.rule.id : ''})`;
          } catch (err) { result.textContent = err.message; }
        },
      }, 'Test'), ' ', result)),
    h('div', { class: 'panel' }, h('h2', {}, 'Bans'), bans.items.length ? table([
      ['address', (x) => x.ip], ['until', (x) => (x.until ? time(x.until) : 'permanent')], ['reason', (x) => x.reason, 'msg'],
      ['', (x) => (can('operator') ? action('Lift', () => api('DELETE', '/bans/' + enc(x.ip)), 'secondary') : '')],
    ], bans.items) : h('p', { class: 'muted' }, 'none'),
    can('operator') ? h('div', { class: 'toolbar', id: 'ban-form' },
      h('label', {}, 'address', b.ip), h('label', {}, 'duration', b.duration), h('label', {}, 'reason', b.reason),
      action('Ban', () => api('POST', '/bans', { ip: b.ip.value.trim(), duration: b.duration.value.trim(), reason: b.reason.value.trim() }), 'danger', 'ban-add')) : null),
  ];
}

const PF = { route: '', granularity: 'minute' };
async function performance() {
  const [tr, slow] = await Promise.all([api('GET', '/perf/trends?granularity=' + PF.granularity), api('GET', '/perf/slow?limit=25')]);
  const routes = Object.keys(tr.routes).sort();
  if (!routes.includes(PF.route)) PF.route = routes[0] || '';
  const buckets = tr.routes[PF.route] || [];
  const last = buckets[buckets.length - 1];
  return [
    h('h1', {}, 'Performance'),
    h('div', { class: 'toolbar' },
      h('label', {}, 'route', h('select', { id: 'perf-route', onchange: (e) => { PF.route = e.target.value; render(); } },
        routes.map((r) => h('option', { value: r, selected: r === PF.route }, r)))),
      h('label', {}, 'buckets', h('select', { onchange: (e) => { PF.granularity = e.target.value; render(); } },
        ['minute', 'hour'].map((g) => h('option', { value: g, selected: g === PF.granularity }, g))))),
    last ? h('div', { class: 'cards' }, card('p50 ms (last bucket)', last.p50_ms, 'perf-p50'), card('p95 ms', last.p95_ms), card('p99 ms', last.p99_ms), card('requests', last.count)) : null,
    h('div', { class: 'panel' }, buckets.length ? latencyChart(buckets) : h('p', { class: 'muted' }, 'no traffic yet')),
    h('h2', {}, 'Slowest requests'),
    h('div', { class: 'panel' }, slow.items.length ? table([
      ['time', (p) => time(p.time)], ['route', (p) => p.route || ''], ['ms', (p) => p.duration_ms ?? p.total_ms ?? ''],
      ['severity', (p) => p.severity || ''], ['path', (p) => p.path || '', 'msg'],
    ], slow.items) : h('p', { class: 'muted' }, 'none')),
  ];
}

async function backups() {
  const [b, a] = await Promise.all([api('GET', '/backups'), api('GET', '/archives')]);
  const result = h('pre', { id: 'verify-result' });
  return [
    h('h1', {}, 'Backups and archives'),
    can('admin') ? h('p', {}, action('Create backup now', () => api('POST', '/backups'), '', 'backup-create'), ' ',
      action('Archive expired records now', () => api('POST', '/archive/run'), 'secondary')) : null,
    h('div', { class: 'panel' }, h('h2', {}, 'Backups'), b.items.length ? table([
      ['name', (x) => x.name], ['bytes', (x) => x.bytes], ['modified', (x) => time(x.modified)],
      ['', (x) => (can('admin') ? h('button', {
        type: 'button', class: 'secondary',
        onclick: async () => {
          try {
            const r = await api('POST', `/backups/${enc(x.name)}/verify`);
            result.textContent = 'verified: ' + JSON.stringify(r.counts || r, null, 1);
          } catch (err) { result.textContent = 'damaged: ' + err.message; }
        },
      }, 'Verify') : '')],
    ], b.items) : h('p', { class: 'muted' }, 'none'), result),
    h('div', { class: 'panel' }, h('h2', {}, 'Archives'), a.items.length ? table([
      ['file', (x) => x.file || x.name || ''], ['oldest', (x) => time(x.oldest)], ['newest', (x) => time(x.newest)],
      ['records', (x) => JSON.stringify(x.records ?? x.counts ?? '')], ['present', (x) => (x.present === false ? 'no' : 'yes')],
    ], a.items) : h('p', { class: 'muted' }, 'none')),
  ];
}

const PAGES = { overview, investigations, sessions, ip: ipControl, performance, backups };

async function render() {
  if (!S.me || S.busy) return;
  S.busy = true;
  const hash = location.hash.slice(1) || 'overview';
  const [page, arg] = hash.split('/');
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === '#' + page);
  try {
    const content = page === 'event' ? await eventPage(decodeURIComponent(arg || '')) : await (PAGES[page] || overview)();
    const main = $('main');
    main.replaceChildren(...[content].flat().filter(Boolean));
    main.dataset.page = page;
    main.dataset.rendered = String(Date.now());
  } catch (err) {
    if (err.message !== 'signed out') say(err.message);
  }
  S.busy = false;
}

// Live updates: the page re-reads its data every five seconds unless someone is typing.
function tick() {
  const a = document.activeElement;
  const typing = a && ['INPUT', 'TEXTAREA', 'SELECT'].includes(a.tagName) && a.id !== 'live';
  if ($('live').checked && !typing && location.hash.split('/')[0] !== '#event') render();
}

function signedIn(me) {
  S.me = { name: me.name, role: me.role };
  S.csrf = me.csrf;
  S.tokens = me.tokens || [];
  $('signin').hidden = true;
  $('nav').hidden = false;
  $('live-label').hidden = false;
  $('signout').hidden = false;
  $('who').textContent = `${me.name} (${me.role})`;
  $('who').dataset.role = me.role;
  if (!S.timer) S.timer = setInterval(tick, 5000);
  render();
}

function signedOut() {
  S.me = null;
  S.csrf = '';
  $('main').replaceChildren();
  $('nav').hidden = true;
  $('live-label').hidden = true;
  $('signout').hidden = true;
  $('who').textContent = '';
  $('signin').hidden = false;
}

async function start() {
  $('signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    $('signin-error').textContent = '';
    try {
      const me = await call('POST', '/ui/login', { token: $('token').value });
      $('token').value = '';
      const full = await call('GET', '/ui/session');
      signedIn(Object.assign(me, full));
    } catch (err) { $('signin-error').textContent = err.message; }
  });
  $('signout').addEventListener('click', async () => {
    try { await call('POST', '/ui/logout'); } catch (_) { /* signed out either way */ }
    signedOut();
  });
  window.addEventListener('hashchange', render);
  try { signedIn(await call('GET', '/ui/session')); } catch (_) { signedOut(); }
}

start();
