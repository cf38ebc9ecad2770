// rio-bridge console: a client of the admin API (/admin, see /admin/openapi.json).
//
// Plain JavaScript, no build step, no dependencies. Pages are hash routes (#/, #/messages,
// #/message/<mId>, #/dead, #/audit). Every element is built with text nodes (never
// innerHTML), so a message text, a contact id or a provider's error can never become markup.
// The admin token lives in sessionStorage and goes out only as a bearer header.
'use strict';

(() => {
  const TOKEN_KEY = 'rio-bridge.admin-token';
  const HOUR_MS = 3600000;
  const REFRESH_MS = 5000;
  const LANE_NAMES = { to_respondio: 'to respond.io', to_provider: 'to provider' };
  const LANE_HELP = {
    to_respondio: "contacts' messages and delivery statuses going to respond.io",
    to_provider: "agents' replies going out through the provider",
  };

  const $ = (id) => document.getElementById(id);

  // ---- DOM building ------------------------------------------------------------------

  // el('a', {href: '#/', class: 'x', onclick: fn}, 'text', child, [more children])
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }

  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }

  // Replaces the children of `target` (arrays are flattened, null and false skipped).
  function fill(target, ...kids) {
    target.replaceChildren();
    append(target, kids);
  }

  function append(e, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === undefined || k === null || k === false) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
  }

  // ---- formatting --------------------------------------------------------------------

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function timeCell(ms) {
    return el('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toISOString() }, fmtTime(ms));
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined) return '—';
    const s = Math.round(ms / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} days`;
  }

  function fmtRate(x) {
    if (!x) return '0';
    return x < 10 ? x.toFixed(2) : x.toFixed(1);
  }

  function laneName(direction) {
    return LANE_NAMES[direction] || direction;
  }

  // What a stored payload says, in one line: the text, or what kind of message it is.
  function describePayload(p) {
    if (p === null || p === undefined) return '';
    if (typeof p === 'string') return p;
    const m = p.message && typeof p.message === 'object' ? p.message : p;
    if (typeof m.text === 'string') return m.text;
    if (m.attachment) return `[${m.attachment.type || 'attachment'}] ${m.attachment.url || ''}`;
    if (m.latitude !== undefined) return `[location] ${m.latitude}, ${m.longitude}`;
    if (p.status) return `[status] ${p.status.value || JSON.stringify(p.status)}`;
    return JSON.stringify(p);
  }

  function stateBadge(m) {
    if (m.discarded) return el('span', { class: 'badge muted', 'data-state': 'discarded' }, 'discarded');
    const cls = { pending: 'warn', attempting: 'info', done: 'ok', dead: 'bad' }[m.state] || 'muted';
    return el('span', { class: `badge ${cls}`, 'data-state': m.state }, m.state);
  }

  function statusBadge(status) {
    if (!status) return el('span', { class: 'muted' }, '—');
    const cls = { sent: 'info', delivered: 'ok', read: 'ok', failed: 'bad' }[status] || 'muted';
    return el('span', { class: `badge ${cls}` }, status);
  }

  // ---- the admin API -----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showLogin();
      throw new ApiError(401, 'not signed in');
    }
    const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, `the gateway did not answer (${e.message})`);
    }
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      // Not JSON: the status says enough.
    }
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('The gateway did not accept the token: sign in again.');
      throw new ApiError(401, 'token not accepted');
    }
    if (!res.ok) {
      const msg = (data && data.error && data.error.message) || res.statusText || 'request failed';
      throw new ApiError(res.status, `${method} ${path.split('?')[0]}: ${res.status} ${msg}`);
    }
    return data;
  }

  // ---- banner ------------------------------------------------------------------------

  let bannerTimer = null;
  function banner(kind, text) {
    const b = $('banner');
    clearTimeout(bannerTimer);
    b.className = `banner ${kind}`;
    fill(b, el('span', {}, text), el('button', { type: 'button', class: 'quiet', onclick: () => { b.hidden = true; } }, 'dismiss'));
    b.hidden = false;
    if (kind === 'ok') bannerTimer = setTimeout(() => { b.hidden = true; }, 8000);
  }

  function showError(e) {
    if (e instanceof ApiError && e.status === 401) return; // the sign-in form says it
    banner('bad', e.message || String(e));
  }

  // A policy violation means part of the page did not load: say so rather than half-work.
  document.addEventListener('securitypolicyviolation', (e) => {
    banner('bad', `The browser blocked part of the console (${e.violatedDirective}).`);
  });

  // ---- sign in / out -----------------------------------------------------------------

  function showLogin(message) {
    stopRefresh();
    $('view').hidden = true;
    $('nav').hidden = true;
    $('signout').hidden = true;
    $('login').hidden = false;
    const err = $('login-error');
    err.hidden = !message;
    err.textContent = message || '';
    $('token').focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('view').hidden = false;
    $('nav').hidden = false;
    $('signout').hidden = false;
  }

  async function signIn(ev) {
    ev.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      await api('GET', '/admin/lanes');
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(e.status === 401 ? 'That token is not one of the admin tokens.' : e.message);
      return;
    }
    $('token').value = '';
    route();
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    $('banner').hidden = true;
    showLogin('Signed out.');
  }

  // ---- routing -----------------------------------------------------------------------

  let refreshTimer = null;
  let routeSeq = 0;

  function stopRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = null;
  }

  // Runs `render` now and then every `ms` while the page is still the current one, until
  // `render` returns false.
  async function keepFresh(seq, ms, render) {
    const again = () => {
      refreshTimer = setTimeout(async () => {
        if (seq !== routeSeq) return;
        let more = true;
        try {
          more = await render();
        } catch (e) {
          showError(e);
        }
        if (more !== false && seq === routeSeq) again();
      }, ms);
    };
    if ((await render()) !== false && seq === routeSeq) again();
  }

  function parseHash() {
    const h = location.hash.replace(/^#/, '') || '/';
    const i = h.indexOf('?');
    return {
      path: i < 0 ? h : h.slice(0, i),
      params: new URLSearchParams(i < 0 ? '' : h.slice(i + 1)),
    };
  }

  async function route() {
    stopRefresh();
    const seq = ++routeSeq;
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showLogin();
      return;
    }
    showApp();
    const { path, params } = parseHash();
    const page = path === '/' ? 'overview'
      : path.startsWith('/message/') ? 'messages'
      : path.slice(1);
    for (const a of $('nav').querySelectorAll('a')) {
      a.classList.toggle('current', a.dataset.page === page);
    }
    const view = $('view');
    const live = () => seq === routeSeq;
    try {
      if (path === '/') await overview(view, seq);
      else if (path === '/messages') await messages(view, params, live);
      else if (path.startsWith('/message/')) await messageDetail(view, decodeURIComponent(path.slice(9)), seq);
      else if (path === '/dead') await deadLetters(view, params, live);
      else if (path === '/audit') await auditLog(view, live);
      else fill(view, el('p', {}, 'No such page. '), el('a', { href: '#/' }, 'Overview'));
    } catch (e) {
      if (live()) showError(e);
    }
  }

  // ---- overview: lanes, plots, pause/resume --------------------------------------------

  async function overview(view, seq) {
    await keepFresh(seq, REFRESH_MS, async () => {
      const [lanes, hist] = await Promise.all([
        api('GET', '/admin/lanes'),
        api('GET', '/admin/lanes/history'),
      ]);
      if (seq !== routeSeq) return;
      const channels = [...new Set(lanes.lanes.map((l) => l.channel))];
      fill(view,
        el('h1', {}, 'Channels'),
        channels.length ? null : el('p', {}, 'No channel is configured.'),
        channels.map((ch) => channelCard(
          ch,
          lanes.lanes.filter((l) => l.channel === ch),
          hist.lanes.filter((l) => l.channel === ch),
          hist.now_ms,
        )),
        el('p', { class: 'muted small' }, `Updated ${fmtTime(Date.now())}; refreshes every ${REFRESH_MS / 1000} s. ` +
          `History is sampled every ${hist.sample_every_ms / 1000} s by the running gateway and starts again when it restarts.`),
      );
    });
  }

  function sumSince(h, field, since) {
    if (!h) return 0;
    let n = 0;
    h.at_ms.forEach((t, i) => { if (t >= since) n += h[field][i]; });
    return n;
  }

  function channelCard(channel, lanes, hist, now) {
    const histOf = (dir) => hist.find((h) => h.direction === dir);
    const rows = lanes.map((l) => {
      const h = histOf(l.direction);
      const failed5 = sumSince(h, 'failed', now - 5 * 60000);
      const state = [];
      if (l.circuit_open) state.push(el('span', { class: 'badge bad', title: 'auth or credit trouble: probing until it clears' }, 'circuit open'));
      if (l.paused) {
        state.push(el('span', { class: 'badge warn' }, l.paused_indefinitely ? 'paused' : `paused until ${fmtTime(l.paused_until_ms).slice(11, 19)}`));
      }
      if (l.configured === false) {
        state.push(el('span', { class: 'badge warn', title: 'a reload removed this channel: its items are kept and go out if it is configured again' }, 'not configured (parked)'));
      }
      if (!state.length) state.push(el('span', { class: 'badge ok' }, 'running'));
      const action = l.configured === false ? null : l.paused
        ? el('button', { type: 'button', 'data-action': 'resume', onclick: () => laneAction(l, 'resume') }, 'Resume')
        : el('button', { type: 'button', class: 'quiet', 'data-action': 'pause', onclick: () => laneAction(l, 'pause') }, 'Pause');
      const deadLink = `#/dead?channel=${encodeURIComponent(l.channel)}&direction=${l.direction}`;
      return el('tr', { 'data-lane': l.direction },
        el('th', { scope: 'row', title: LANE_HELP[l.direction] || '' }, laneName(l.direction)),
        el('td', { class: 'num' }, l.depth),
        el('td', { class: 'num' }, fmtAge(l.oldest_pending_age_ms)),
        el('td', { class: 'num' }, l.configured === false ? '-' : `${fmtRate(l.requests_per_sec)} / ${l.rate_limit_per_sec}`),
        el('td', { class: 'num' }, fmtRate(l.delivered_per_sec)),
        el('td', { class: `num ${failed5 ? 'bad' : ''}` }, failed5),
        el('td', { class: 'num' }, l.dead ? el('a', { href: deadLink, class: 'bad' }, l.dead) : '0'),
        el('td', {}, state),
        el('td', {}, action),
      );
    });
    const colour = { to_respondio: 'c-respondio', to_provider: 'c-provider' };
    const depthSeries = hist.map((h) => ({
      label: laneName(h.direction),
      cls: colour[h.direction],
      points: h.at_ms.map((t, i) => [t, h.depth[i]]),
    }));
    const perSec = (h, field) => h.at_ms.map((t, i) => [t, h.interval_ms[i] > 0 ? h[field][i] * 1000 / h.interval_ms[i] : 0]);
    const rateSeries = hist.map((h) => ({
      label: `${laneName(h.direction)}: requests`,
      cls: colour[h.direction],
      points: perSec(h, 'requests'),
    }));
    rateSeries.push({
      label: 'failures (both lanes)',
      cls: 'c-failed',
      points: mergeSum(hist.map((h) => perSec(h, 'failed'))),
    });
    return el('section', { class: 'card', 'data-channel': channel },
      el('h2', {}, channel),
      el('table', { class: 'lanes' },
        el('thead', {}, el('tr', {},
          el('th', {}, 'Lane'),
          el('th', { class: 'num', title: 'items waiting or being sent' }, 'Waiting'),
          el('th', { class: 'num' }, 'Oldest waiting'),
          el('th', { class: 'num', title: 'requests per second over the last minute / the limit' }, 'Requests/s'),
          el('th', { class: 'num', title: 'over the last minute' }, 'Delivered/s'),
          el('th', { class: 'num', title: 'failed attempts in the last 5 minutes (retried, ambiguous, throttled or dead)' }, 'Failed (5 min)'),
          el('th', { class: 'num' }, 'Dead letters'),
          el('th', {}, 'State'),
          el('th', {}, ''),
        )),
        el('tbody', {}, rows),
      ),
      el('div', { class: 'plots' },
        lineChart('Waiting, last hour', depthSeries, now, 4, (v) => String(Math.round(v))),
        lineChart('Requests per second, last hour', rateSeries, now, 1, (v) => fmtRate(v)),
      ),
    );
  }

  // Adds series sampled at the same instants (the lanes are sampled together).
  function mergeSum(seriesList) {
    const by = new Map();
    for (const s of seriesList) for (const [t, v] of s) by.set(t, (by.get(t) || 0) + v);
    return [...by.entries()].sort((a, b) => a[0] - b[0]);
  }

  async function laneAction(lane, what) {
    const name = `${lane.channel} ${laneName(lane.direction)}`;
    if (what === 'pause' && !confirm(`Pause ${name}? Nothing is sent on it until you resume it; ` +
      'new messages are still accepted and wait in its queue.')) return;
    try {
      await api('POST', `/admin/lanes/${encodeURIComponent(lane.channel)}/${lane.direction}/${what}`, {});
      banner('ok', what === 'pause' ? `Paused ${name}.` : `Resumed ${name}.`);
    } catch (e) {
      showError(e);
    }
    route();
  }

  // A line chart over the last hour as SVG: one polyline per series, broken where
  // samples are missing (the gateway was down), y from 0 to a round maximum (at least
  // `minTop`, so a quiet lane's flat line does not fill the plot).
  function lineChart(title, series, now, minTop, fmt) {
    const W = 560, H = 170, L = 44, R = 12, T = 12, B = 24;
    const t0 = now - HOUR_MS;
    const x = (t) => L + ((t - t0) / HOUR_MS) * (W - L - R);
    let max = 0;
    for (const s of series) for (const [, v] of s.points) max = Math.max(max, v);
    const top = niceCeil(Math.max(max, minTop));
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const g = [];
    for (const f of [0, 0.5, 1]) {
      const v = top * f;
      g.push(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }));
      g.push(svg('text', { x: L - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmt(v)));
    }
    for (const m of [60, 45, 30, 15, 0]) {
      const tx = x(now - m * 60000);
      g.push(svg('line', { x1: tx, x2: tx, y1: H - B, y2: H - B + 4, class: 'grid' }));
      g.push(svg('text', { x: tx, y: H - 6, class: 'axis', 'text-anchor': m === 0 ? 'end' : 'middle' }, m === 0 ? 'now' : `−${m} min`));
    }
    let samples = 0;
    for (const s of series) {
      const pts = s.points.filter(([t]) => t >= t0);
      samples = Math.max(samples, pts.length);
      for (const run of splitGaps(pts)) {
        if (run.length === 1) {
          g.push(svg('circle', { cx: x(run[0][0]), cy: y(run[0][1]), r: 2.5, class: `dot ${s.cls}` }));
        } else {
          g.push(svg('polyline', { points: run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' '), class: `line ${s.cls}` }));
        }
      }
    }
    if (samples === 0) {
      g.push(svg('text', { x: (L + W - R) / 2, y: H / 2, class: 'axis', 'text-anchor': 'middle' }, 'no samples yet'));
    }
    const legend = series.map((s) => {
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      return el('span', { class: 'legend' }, el('span', { class: `swatch ${s.cls}` }), s.label,
        last === null ? '' : el('span', { class: 'muted' }, ` (now ${fmt(last)})`));
    });
    return el('figure', { class: 'plot' },
      el('figcaption', {}, title),
      svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title }, svg('title', {}, title), g),
      el('div', {}, legend),
    );
  }

  function niceCeil(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    // Steps whose half is a round number too (the middle grid line).
    for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // Consecutive samples further apart than three sampling intervals are not joined.
  function splitGaps(pts) {
    const runs = [];
    let run = [];
    for (const p of pts) {
      if (run.length && p[0] - run[run.length - 1][0] > 15000) {
        runs.push(run);
        run = [];
      }
      run.push(p);
    }
    if (run.length) runs.push(run);
    return runs;
  }

  // ---- messages: search ----------------------------------------------------------------

  // A phone number as typed ("+61 400 000-001", "(04) 0000 0001") to the E.164-ish form
  // the store keeps; anything else is used as given.
  function phoneLike(q) {
    return /^\+?[\d\s().-]{5,}$/.test(q);
  }
  function normalisePhone(q) {
    return q.replace(/[\s().-]/g, '');
  }

  const SINCE = { '': null, '1h': HOUR_MS, '24h': 24 * HOUR_MS, '7d': 7 * 24 * HOUR_MS };

  function select(id, value, options) {
    return el('select', { id, name: id },
      options.map(([v, label]) => el('option', { value: v, selected: v === value }, label)));
  }

  async function messages(view, params, live) {
    const q = (params.get('q') || '').trim();
    const form = el('form', { class: 'search', id: 'search-form' },
      el('label', { for: 'q' }, 'Contact or mId'),
      el('input', { id: 'q', name: 'q', type: 'search', value: q, placeholder: '+61400000001 or 01J…', autocomplete: 'off', spellcheck: 'false' }),
      select('state', params.get('state') || '', [['', 'any state'], ['pending', 'pending'], ['attempting', 'attempting'], ['done', 'done'], ['dead', 'dead']]),
      select('direction', params.get('direction') || '', [['', 'both directions'], ['to_respondio', 'to respond.io'], ['to_provider', 'to provider']]),
      select('since', params.get('since') || '', [['', 'any time'], ['1h', 'last hour'], ['24h', 'last 24 h'], ['7d', 'last 7 days']]),
      el('button', { type: 'submit', id: 'search' }, 'Search'),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      for (const k of ['q', 'state', 'direction', 'since']) {
        const v = form.elements[k].value.trim();
        if (v) p.set(k, v);
      }
      const next = `#/messages?${p}`;
      if (location.hash === next) route();
      else location.hash = next;
    });
    const results = el('div', { id: 'results' }, el('p', { class: 'muted' }, 'Searching…'));
    fill(view, el('h1', {}, 'Messages'), form, results);
    form.elements.q.focus();

    const base = new URLSearchParams();
    for (const k of ['state', 'direction']) if (params.get(k)) base.set(k, params.get(k));
    const since = SINCE[params.get('since') || ''];
    if (since) base.set('since', String(Date.now() - since));

    // A phone number is a contact (also tried with a leading + when typed without one);
    // anything else is tried as an mId, then as a contact.
    const byContact = (c) => [`contact=${encodeURIComponent(c)}`, `contact ${c}`];
    let attempts = [];
    if (!q) attempts = [['', 'the latest messages']];
    else if (phoneLike(q)) {
      const p = normalisePhone(q);
      attempts = p.startsWith('+') ? [byContact(p)] : [byContact(p), byContact(`+${p}`)];
    } else attempts = [[`mid=${encodeURIComponent(q)}`, `mId ${q}`], byContact(q)];

    let found = null;
    for (const [filter, what] of attempts) {
      const query = [base.toString(), filter].filter(Boolean).join('&');
      const page = await api('GET', `/admin/messages?${query}`);
      if (!live()) return;
      found = { query, what, page };
      if (page.items.length) break;
    }
    renderResults(results, found, live);
  }

  function renderResults(box, found, live) {
    const { query, what, page } = found;
    if (!page.items.length) {
      fill(box, el('p', { class: 'empty' }, `No messages for ${what}.`));
      return;
    }
    const tbody = el('tbody', {});
    const more = el('p', {});
    const addPage = (p) => {
      for (const m of p.items) tbody.append(messageRow(m));
      more.replaceChildren();
      if (p.next_cursor) {
        more.append(el('button', {
          type: 'button', class: 'quiet', onclick: async () => {
            try {
              const next = await api('GET', `/admin/messages?${[query, `cursor=${p.next_cursor}`].filter(Boolean).join('&')}`);
              if (live()) addPage(next);
            } catch (e) { showError(e); }
          },
        }, 'Load more'));
      }
    };
    fill(box,
      el('p', { class: 'muted' }, `Showing ${what}, newest first.`),
      el('table', { class: 'list', id: 'results-table' },
        el('thead', {}, el('tr', {},
          ['Received', 'Channel', 'Direction', 'Contact', 'mId', 'Text', 'State', 'Status', 'Attempts', 'Last error'].map((h) => el('th', {}, h)))),
        tbody),
      more,
    );
    addPage(page);
  }

  function messageRow(m) {
    const href = `#/message/${encodeURIComponent(m.mid)}`;
    return el('tr', { class: 'clickable', 'data-mid': m.mid, onclick: (e) => { if (e.target.tagName !== 'A') location.hash = href; } },
      el('td', { class: 'nowrap' }, timeCell(m.created_ms)),
      el('td', {}, m.channel),
      el('td', { class: 'nowrap' }, laneName(m.direction)),
      el('td', { class: 'nowrap' }, m.contact),
      el('td', {}, el('a', { href, class: 'mid' }, m.mid)),
      el('td', { class: 'text' }, describePayload(m.payload)),
      el('td', {}, stateBadge(m)),
      el('td', {}, statusBadge(m.status)),
      el('td', { class: 'num' }, m.attempts),
      el('td', { class: 'error-text' }, m.last_error || ''),
    );
  }

  // ---- one message: what happened, and the fix -------------------------------------------

  function verdict(m, history = []) {
    const att = `${m.attempts} attempt${m.attempts === 1 ? '' : 's'}`;
    const amb = m.ambiguous_attempts ? ` (${m.ambiguous_attempts} ambiguous: may have arrived)` : '';
    if (m.discarded) return ['muted', `Discarded, not sent: ${m.last_error || ''}`];
    switch (m.state) {
      case 'dead':
        return ['bad', `Dead letter: gave up after ${att}${amb}. Last error: ${m.last_error || 'none recorded'}. ` +
          'Replay it once the cause is fixed, or discard it.'];
      case 'pending':
        return ['warn', `Waiting to be sent${m.attempts ? `, after ${att}${amb}` : ''}; next attempt ${m.next_attempt_ms ? fmtTime(m.next_attempt_ms) : 'when the lane gets to it'}.` +
          (m.last_error ? ` Last error: ${m.last_error}` : '')];
      case 'attempting':
        return ['info', `Being sent right now (${att} so far).`];
      default:
        break;
    }
    if (m.direction === 'to_respondio') return ['ok', `Delivered to respond.io after ${att}${amb}.`];
    switch (m.status) {
      case 'delivered': return ['ok', `Delivered to the contact (the provider's receipt says so), after ${att}${amb}.`];
      case 'read': return ['ok', 'Delivered and read by the contact.'];
      case 'failed': {
        // A replayed failed send keeps `failed` (respond.io was told so, and it is final
        // there); what happened to the replay is in its history.
        const events = history.map((h) => h.event);
        const replayed = events.lastIndexOf('replayed');
        const after = replayed < 0 ? [] : events.slice(replayed + 1);
        if (after.includes('receipt delivered ignored') || after.includes('receipt read ignored')) {
          return ['ok', 'Replayed and delivered to the contact (the provider\'s receipt says so). ' +
            'respond.io was told it failed before the replay and is not told again: failed is final there.'];
        }
        if (replayed >= 0) {
          return ['warn', 'Replayed after it failed; respond.io keeps the failed status. ' +
            'The replay\'s outcome shows in the timeline below.'];
        }
        return ['bad', `Accepted by the provider, then reported failed: ${m.last_error || 'no reason given'}.`];
      }
      case 'sent': return ['ok', `Accepted by the provider after ${att}${amb}; no delivery receipt yet.`];
      default: return ['ok', `Sent after ${att}${amb}.`];
    }
  }

  async function messageDetail(view, mid, seq) {
    await keepFresh(seq, 2000, async () => {
      const d = await api('GET', `/admin/messages/${encodeURIComponent(mid)}`);
      if (seq !== routeSeq) return;
      // Keep open exchanges open across refreshes.
      const open = new Set([...view.querySelectorAll('details[open][data-log]')].map((x) => x.dataset.log));
      fill(view, renderDetail(d, open));
      // Watch it while it is on its way (after a replay, say), and for a while after the
      // provider took it, for the delivery receipt; stop once it is settled.
      const m = d.message;
      return ['pending', 'attempting'].includes(m.state) ||
        (m.state === 'done' && m.status === 'sent' && Date.now() - m.updated_ms < 120000);
    });
  }

  function renderDetail(d, open) {
    const m = d.message;
    const [cls, text] = verdict(m, d.history || []);
    const actions = m.state === 'dead' ? el('div', { class: 'actions' },
      el('button', { type: 'button', id: 'replay', onclick: () => replay([m.id], true) }, 'Replay'),
      el('button', { type: 'button', id: 'discard', class: 'danger', onclick: () => discard([m.id], true) }, 'Discard'),
    ) : null;
    const facts = [
      ['Channel', m.channel],
      ['Direction', `${laneName(m.direction)} (${m.kind})`],
      ['Contact', el('a', { href: `#/messages?q=${encodeURIComponent(m.contact)}` }, m.contact)],
      ['Received', timeCell(m.created_ms)],
      ['Last change', timeCell(m.updated_ms)],
      ['State', stateBadge(m)],
      ['Delivery status', statusBadge(m.status)],
      ['Attempts', `${m.attempts}${m.ambiguous_attempts ? ` (${m.ambiguous_attempts} ambiguous)` : ''}`],
      ['Provider id', m.provider_id || '—'],
    ];
    const logs = new Map(d.channel_logs.map((l) => [l.id, l]));
    return el('div', { class: 'detail', 'data-mid': m.mid },
      el('p', {}, el('a', { href: `#/messages?q=${encodeURIComponent(m.contact)}` }, `← messages of ${m.contact}`)),
      el('h1', {}, 'Message ', el('code', {}, m.mid)),
      el('div', { class: `verdict ${cls}`, id: 'verdict' }, text),
      actions,
      el('section', { class: 'card' },
        el('dl', { class: 'facts' }, facts.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
        el('h3', {}, 'Content'),
        el('p', { class: 'content' }, describePayload(m.payload)),
        el('details', {}, el('summary', {}, 'Stored payload (JSON)'), el('pre', {}, JSON.stringify(m.payload, null, 2))),
      ),
      el('section', { class: 'card' },
        el('h2', {}, 'Timeline'),
        el('table', { class: 'list timeline', id: 'timeline' },
          el('thead', {}, el('tr', {}, el('th', {}, 'Time'), el('th', {}, 'What'), el('th', {}, 'Detail'))),
          el('tbody', {}, d.timeline.map((t) => timelineRow(t, logs, open))),
        ),
      ),
      d.status_events.length ? el('section', { class: 'card' },
        el('h2', {}, 'Statuses reported to respond.io'),
        el('table', { class: 'list' },
          el('thead', {}, el('tr', {}, ['Created', 'Status', 'State', 'Attempts', 'Last error'].map((h) => el('th', {}, h)))),
          el('tbody', {}, d.status_events.map((s) => el('tr', {},
            el('td', {}, timeCell(s.created_ms)),
            el('td', {}, describePayload(s.payload)),
            el('td', {}, stateBadge(s)),
            el('td', { class: 'num' }, s.attempts),
            el('td', { class: 'error-text' }, s.last_error || ''),
          ))),
        ),
      ) : null,
    );
  }

  function timelineRow(t, logs, open) {
    const log = t.channel_log_id !== undefined ? logs.get(t.channel_log_id) : null;
    const bad = /dead|fail|retry|ambiguous|throttled|fault|→ [45]\d\d|no answer/.test(`${t.event}`);
    const detail = [];
    if (t.detail) detail.push(el('span', { class: bad ? 'error-text' : '' }, t.detail));
    if (t.duration_ms !== undefined && t.duration_ms !== null) detail.push(el('span', { class: 'muted' }, ` ${t.duration_ms} ms`));
    if (log) detail.push(exchange(log, open));
    return el('tr', { class: `src-${t.source}${bad ? ' bad' : ''}` },
      el('td', { class: 'nowrap' }, timeCell(t.at_ms)),
      el('td', {}, t.event),
      el('td', {}, detail),
    );
  }

  // One HTTP exchange of the channel log (already redacted by the gateway).
  function exchange(l, open) {
    const part = (title, body) => (body ? [el('h4', {}, title), el('pre', {}, prettyJson(body))] : []);
    return el('details', { class: 'exchange', 'data-log': l.id, open: open.has(String(l.id)) },
      el('summary', {}, `${l.method} ${l.url}`),
      el('p', {}, `${l.direction} ${l.kind}: `, l.status === null ? 'no answer' : `HTTP ${l.status}`, ` in ${l.duration_ms} ms`,
        l.error ? el('span', { class: 'error-text' }, ` — ${l.error}`) : ''),
      part('Request headers', l.request_headers),
      part('Request body', l.request_body),
      part('Response body', l.response_body),
    );
  }

  function prettyJson(s) {
    if (typeof s !== 'string') return JSON.stringify(s, null, 2);
    try {
      return JSON.stringify(JSON.parse(s), null, 2);
    } catch (_) {
      return s;
    }
  }

  // ---- dead letters ------------------------------------------------------------------

  async function replay(ids, stay) {
    try {
      let r = await api('POST', '/admin/dead-letters/replay', { ids });
      let forced = [];
      // A send whose earlier attempt may already have reached the contact is replayed
      // only when asked again with force (and the audit log says so).
      if (r.needs_force && r.needs_force.length && confirm(
        `${r.needs_force.length === 1 ? 'One send' : `${r.needs_force.length} sends`} may already ` +
        'have reached the contact (an earlier attempt got no answer). Send again anyway?')) {
        const f = await api('POST', '/admin/dead-letters/replay', { ids: r.needs_force, force: true });
        forced = f.replayed;
        r = Object.assign({}, r, { replayed: r.replayed.concat(f.replayed), needs_force: f.needs_force });
      }
      const parts = [`Replayed ${r.replayed.length}: queued to be sent again.`];
      if (forced.length) parts.push(`${forced.length} of them forced (may reach the contact twice).`);
      if (r.needs_force && r.needs_force.length) parts.push(`${r.needs_force.length} left dead: may already have been sent (replay with force).`);
      if (r.superseded && r.superseded.length) parts.push(`${r.superseded.length} superseded: a later status went out, so not sent (settled).`);
      if (r.not_dead.length) parts.push(`${r.not_dead.length} no longer dead (left alone).`);
      if (r.not_found.length) parts.push(`${r.not_found.length} not found.`);
      banner(r.replayed.length ? 'ok' : 'warn', parts.join(' '));
    } catch (e) {
      showError(e);
    }
    if (stay) route();
  }

  async function discard(ids, stay) {
    if (!confirm(`Discard ${ids.length === 1 ? 'this dead letter' : `${ids.length} dead letters`}? ` +
      'It will not be sent; respond.io is not told either.')) return false;
    try {
      const r = await api('POST', '/admin/dead-letters/discard', { ids });
      banner('ok', `Discarded ${r.discarded.length}.` + (r.not_dead.length ? ` ${r.not_dead.length} were no longer dead.` : ''));
    } catch (e) {
      showError(e);
    }
    if (stay) route();
    return true;
  }

  async function deadLetters(view, params, live) {
    const filter = new URLSearchParams();
    for (const k of ['channel', 'direction']) if (params.get(k)) filter.set(k, params.get(k));
    const [dead, raw] = await Promise.all([
      api('GET', `/admin/dead-letters?${filter}&limit=200`),
      api('GET', `/admin/raw-webhooks?${params.get('channel') ? `channel=${encodeURIComponent(params.get('channel'))}&` : ''}limit=100`),
    ]);
    if (!live()) return;
    const checks = [];
    const all = el('input', { type: 'checkbox', title: 'select all', onchange: (e) => { for (const c of checks) c.checked = e.target.checked; } });
    const selected = () => checks.filter((c) => c.checked).map((c) => Number(c.value));
    const bulk = el('div', { class: 'actions' },
      el('button', { type: 'button', id: 'replay-selected', onclick: async () => { const ids = selected(); if (ids.length) await replay(ids, true); } }, 'Replay selected'),
      el('button', { type: 'button', class: 'danger', onclick: async () => { const ids = selected(); if (ids.length) await discard(ids, true); } }, 'Discard selected'),
    );
    const scope = filter.toString() ? ` (${[params.get('channel'), params.get('direction') && laneName(params.get('direction'))].filter(Boolean).join(', ')})` : '';
    fill(view,
      el('h1', {}, `Dead letters${scope}`),
      el('p', { class: 'muted' }, 'Items that gave up: the attempts ran out, they aged out, or the other side refused them for good. ' +
        'Replay sends again (once, even if clicked twice); discard settles them without sending.'),
      dead.items.length ? [
        bulk,
        el('table', { class: 'list', id: 'dead-table' },
          el('thead', {}, el('tr', {}, el('th', {}, all),
            ['Died', 'Channel', 'Direction', 'Contact', 'mId', 'Text', 'Attempts', 'Why'].map((h) => el('th', {}, h)))),
          el('tbody', {}, dead.items.map((m) => {
            const c = el('input', { type: 'checkbox', value: m.id, 'aria-label': `select ${m.mid}` });
            checks.push(c);
            return el('tr', { 'data-mid': m.mid },
              el('td', {}, c),
              el('td', { class: 'nowrap' }, timeCell(m.updated_ms)),
              el('td', {}, m.channel),
              el('td', { class: 'nowrap' }, laneName(m.direction)),
              el('td', { class: 'nowrap' }, m.contact),
              el('td', {}, el('a', { href: `#/message/${encodeURIComponent(m.mid)}`, class: 'mid' }, m.mid)),
              el('td', { class: 'text' }, describePayload(m.payload)),
              el('td', { class: 'num' }, m.attempts),
              el('td', { class: 'error-text' }, m.last_error || ''),
            );
          })),
        ),
        dead.next_cursor ? el('p', { class: 'muted' }, 'Showing the newest 200; filter by lane from the overview to see others.') : null,
      ] : el('p', { class: 'empty' }, 'No dead letters.'),
      el('h2', {}, 'Webhooks we could not read'),
      el('p', { class: 'muted' }, "Authentic provider webhooks whose body did not parse, kept as received. Replay parses them again " +
        '(after an upgrade that reads them); discard deletes them.'),
      raw.items.length ? el('table', { class: 'list', id: 'raw-table' },
        el('thead', {}, el('tr', {}, ['Received', 'Channel', 'Route', 'Why', 'Body', ''].map((h) => el('th', {}, h)))),
        el('tbody', {}, raw.items.map((r) => el('tr', {},
          el('td', { class: 'nowrap' }, timeCell(r.received_ms)),
          el('td', {}, r.channel),
          el('td', {}, r.route),
          el('td', { class: 'error-text' }, r.reason),
          el('td', {}, el('details', {}, el('summary', {}, r.content_type || 'body'), el('pre', {}, prettyJson(r.body)))),
          el('td', { class: 'nowrap' },
            el('button', { type: 'button', class: 'quiet', onclick: () => rawAction(r.id, 'replay') }, 'Replay'),
            el('button', { type: 'button', class: 'danger', onclick: () => rawAction(r.id, 'discard') }, 'Discard')),
        ))),
      ) : el('p', { class: 'empty' }, 'None.'),
    );
  }

  async function rawAction(id, what) {
    if (what === 'discard' && !confirm('Delete this kept webhook? Its content is lost.')) return;
    try {
      const r = await api('POST', `/admin/raw-webhooks/${id}/${what}`, {});
      banner('ok', what === 'replay' ? `Replayed: ${JSON.stringify(r)}` : 'Deleted.');
    } catch (e) {
      showError(e);
    }
    route();
  }

  // ---- audit log ---------------------------------------------------------------------

  async function auditLog(view, live) {
    const tbody = el('tbody', {});
    const more = el('p', {});
    const load = async (cursor) => {
      const page = await api('GET', `/admin/audit?limit=100${cursor ? `&cursor=${cursor}` : ''}`);
      if (!live()) return;
      for (const a of page.items) {
        tbody.append(el('tr', {},
          el('td', { class: 'nowrap' }, timeCell(a.at_ms)),
          el('td', {}, a.actor),
          el('td', {}, a.action),
          el('td', {}, a.target),
          el('td', {}, a.detail || ''),
        ));
      }
      fill(more, page.next_cursor
        ? el('button', { type: 'button', class: 'quiet', onclick: () => load(page.next_cursor).catch(showError) }, 'Load more')
        : '');
      if (!tbody.children.length) fill(more, el('p', { class: 'empty' }, 'Nothing has been changed through the admin API yet.'));
    };
    fill(view,
      el('h1', {}, 'Audit log'),
      el('p', { class: 'muted' }, 'Who replayed, discarded, paused, resumed or purged what, newest first (by admin token name).'),
      el('table', { class: 'list' },
        el('thead', {}, el('tr', {}, ['When', 'Who', 'Action', 'Target', 'Detail'].map((h) => el('th', {}, h)))),
        tbody),
      more,
    );
    await load(null);
  }

  // ---- start -------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', signOut);
    window.addEventListener('hashchange', route);
    route();
  });
})();
