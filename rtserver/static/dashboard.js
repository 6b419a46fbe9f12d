// The rtserver dashboard: applies the page's snapshot, then the batched updates of
// GET /dashboard/stream (Server-Sent Events). Every tab (Overview, Flows, a flow, Messages,
// System) loads this script and follows the same stream; each panel is applied where its
// elements are on the page. Event data comes from shoppers' browsers, so it is only ever put in
// the page as text (textContent), never as HTML.
(function () {
  'use strict';

  var FEED_MAX = 200;
  var RATE_MAX = 240;
  var CHART_SPAN_S = 120;
  var STATES = ['queued', 'sending', 'sent', 'retry_wait', 'ambiguous', 'failed', 'suppressed'];

  var state = { feed: [], seen: new Set(), rates: [[], []], lastId: document.body.dataset.since,
                updates: 0, chart: null };
  window.rtDashboard = state;  // for tests and curious operators

  function $(id) { return document.getElementById(id); }

  function clock(at) {
    if (at === null || at === undefined) return '';
    return new Date(at * 1000).toISOString().replace('T', ' ').slice(5, 19);  // as the page
  }

  // As the page writes them (dashboard/routes.py: duration): "5 s", "12 min 5 s", "1 h 12 min".
  var UNITS = [['d', 86400], ['h', 3600], ['min', 60], ['s', 1]];
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '–';
    var whole = Math.floor(seconds);
    if (whole < 1) return '< 1 s';
    var parts = [];
    for (var i = 0; i < UNITS.length && parts.length < 2; i++) {
      if (whole >= UNITS[i][1] || parts.length) {
        parts.push(Math.floor(whole / UNITS[i][1]) + ' ' + UNITS[i][0]);
        whole = whole % UNITS[i][1];
      }
    }
    if (parts.length === 2 && parts[1].indexOf('0 ') === 0) parts.pop();
    return parts.join(' ');
  }

  function money(value) {
    if (value === null || value === undefined) return '–';
    return (Number(value).toFixed(2) + ' ' + (document.body.dataset.currency || '')).trim();
  }

  function stamp(at) {
    if (at === null || at === undefined) return '';
    return new Date(at * 1000).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
  }

  state.format = { duration: duration, money: money, stamp: stamp };  // for tests

  function ms(value) { return value === null || value === undefined ? '–' : value + ' ms'; }

  function cell(text, className) {
    var td = document.createElement('td');
    td.textContent = text === null || text === undefined ? '' : String(text);
    if (className) td.className = className;
    return td;
  }

  function personCell(person) {
    var td = document.createElement('td');
    var a = document.createElement('a');
    a.href = '/dashboard/person/' + encodeURIComponent(person);
    a.textContent = person;
    td.appendChild(a);
    return td;
  }

  function fill(id, rows, columns, empty) {
    var body = $(id);
    if (!body) return;
    var fragment = document.createDocumentFragment();
    rows.forEach(function (row) {
      var tr = document.createElement('tr');
      columns(row).forEach(function (td) { tr.appendChild(td); });
      fragment.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement('tr');
      var td = cell(empty, 'empty');
      td.colSpan = 12;
      tr.appendChild(td);
      fragment.appendChild(tr);
    }
    body.replaceChildren(fragment);
    var table = body.closest('table.stack');  // stacked on a phone: each cell labelled
    if (!table) return;
    var heads = table.querySelectorAll('thead th');
    var trs = body.children;
    for (var r = 0; r < trs.length; r++) {
      for (var c = 0; c < trs[r].children.length && c < heads.length; c++) {
        var td = trs[r].children[c];
        if (!td.classList.contains('empty')) td.dataset.label = heads[c].textContent;
      }
    }
  }

  function list(id, items, text, empty) {
    var ul = $(id);
    if (!ul) return;
    var fragment = document.createDocumentFragment();
    items.forEach(function (item) {
      var li = document.createElement('li');
      li.textContent = text(item);
      fragment.appendChild(li);
    });
    if (!items.length) {
      var li = document.createElement('li');
      li.className = 'empty';
      li.textContent = empty;
      fragment.appendChild(li);
    }
    ul.replaceChildren(fragment);
  }

  // --- the live event feed --------------------------------------------------------------------

  function addEvents(events, reset) {
    if (reset) { state.feed = []; state.seen = new Set(); }
    for (var i = events.length - 1; i >= 0; i--) {  // oldest first, so the newest ends on top
      var e = events[i];
      if (e.id && state.seen.has(e.id)) continue;
      if (e.id) state.seen.add(e.id);
      state.feed.unshift(e);
    }
    while (state.feed.length > FEED_MAX) state.seen.delete(state.feed.pop().id);
    renderFeed();
  }

  function renderFeed() {
    if (!$('events-body')) return;
    var name = ($('filter-name').value || '').toLowerCase();
    var person = ($('filter-person').value || '').toLowerCase();
    var shown = state.feed.filter(function (e) {
      return (!name || (e.name + ' ' + e.type).toLowerCase().indexOf(name) >= 0) &&
             (!person || String(e.person).toLowerCase().indexOf(person) >= 0);
    });
    fill('events-body', shown, function (e) {
      return [cell(clock(e.at)), cell(e.name), personCell(e.person), cell(e.source),
              cell(e.props, 'props')];
    }, name || person ? 'no matching events' : 'no events yet');
  }

  // --- the chart ------------------------------------------------------------------------------

  function addRates(points, reset) {
    if (reset) state.rates = [[], []];
    points.forEach(function (p) { state.rates[0].push(p[0]); state.rates[1].push(p[1]); });
    while (state.rates[0].length > RATE_MAX) { state.rates[0].shift(); state.rates[1].shift(); }
    if (points.length && $('c-rate')) $('c-rate').textContent = points[points.length - 1][1];
    if (!window.uPlot || !$('chart')) return;
    if (!state.chart) {
      var target = $('chart');
      state.chart = new window.uPlot({
        width: Math.max(200, target.clientWidth - 10), height: 200,
        series: [{}, { label: 'events/s', stroke: '#4f46e5', fill: 'rgba(79,70,229,0.12)',
                       width: 2 }],
        axes: [{}, { label: 'events/s' }],
        scales: { x: { time: true, range: function (u, min, max) {
          return [Math.max(min, max - CHART_SPAN_S), max];  // the last minutes, live
        } } },
      }, state.rates, target);
    } else {
      state.chart.setData(state.rates);
    }
  }

  // --- panels ---------------------------------------------------------------------------------

  function applyCounters(c) {
    ['stored', 'duplicates', 'websockets', 'viewers', 'queue', 'timers_armed', 'failed_commits',
     'sender'].forEach(function (key) {
      var el = $('c-' + key);
      if (el && c[key] !== undefined) el.textContent = c[key];
    });
  }

  function applyTimers(timers) {
    fill('timers-body', timers, function (t) {
      return [cell(clock(t.due)), cell(t.due_in_s + ' s'), cell(t.workflow),
              personCell(t.person_id), cell(t.key), cell(t.step)];
    }, 'no timers pending');
  }

  function applyRuns(runs) {
    var active = Object.keys(runs.active).sort().map(function (wf) {
      return wf + ': ' + runs.active[wf];
    });
    if ($('runs-active')) {
      $('runs-active').textContent = active.length ? active.join(' ') : 'no open runs';
    }
    flowCells('open', function (flow) { return runs.active[flow] || 0; });
    fill('runs-body', runs.rows, function (r) {
      return [cell(r.workflow), personCell(r.person_id), cell(r.key),
              cell(r.step + ' ' + r.step_kind + (r.note ? ' (' + r.note + ')' : '')),
              cell(r.holdout ? 'holdout' : r.variant),
              cell(clock(r.started))];
    }, 'no open runs');
  }

  function applyMail(mail) {
    STATES.forEach(function (s) {
      var el = $('mail-' + s);
      if (el) el.textContent = mail.counts[s] || 0;
    });
    fill('mail-body', mail.recent, function (m) {
      return [cell(clock(m.created_at)), cell(m.workflow), cell(m.template),
              personCell(m.person_id), cell(m.recipient), cell(m.state), cell(m.attempts),
              cell(m.last_error)];
    }, 'no mail yet');
    fill('sink-body', mail.sink, function (s) {
      var td = document.createElement('td');
      var a = document.createElement('a');
      a.href = '/dashboard/mail/' + encodeURIComponent(s.id);
      a.target = 'mailview';
      a.textContent = s.subject;
      td.appendChild(a);
      return [cell(clock(s.received_at)), cell(s.recipients.join(', ')), td];
    }, 'no mail received');
    if (mail.hooks) {
      Object.keys(mail.hooks.counts).forEach(function (s) {
        var el = $('hook-' + s);
        if (el) el.textContent = mail.hooks.counts[s];
      });
      fill('hook-body', mail.hooks.recent, function (h) {
        return [cell(clock(h.created_at)), cell(h.workflow), personCell(h.person_id),
                cell(h.url), cell(h.state), cell(h.attempts),
                cell(((h.last_status || '') + ' ' + (h.last_error || '')).trim())];
      }, 'no webhooks yet');
      var off = $('hook-disabled');
      if (off) {
        off.textContent = '';
        (mail.hooks.disabled || []).forEach(function (d) {
          var li = document.createElement('li');
          li.className = 'bad';
          li.textContent = 'disabled: ' + d.url + ' (' + d.reason +
                           '; rtserver webhooks --enable URL)';
          off.appendChild(li);
        });
      }
    }
    list('errors', mail.failed, function (m) {
      return clock(m.created_at) + ' ' + m.template + ' to ' + (m.recipient || m.person_id) +
             ': ' + (m.last_error || 'failed');
    }, 'no failed mail');
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? '–' : Number(value).toFixed(digits);
  }

  function applyFunnel(rows) {
    fill('funnel-body', rows, function (f) {
      if (f.arm === 'lift') {
        var text = 'conversion ' + fixed(f.rate, 4) + ' vs ' + fixed(f.holdout_rate, 4) +
                   ' · z ' + fixed(f.z, 3) + ' · p ' + fixed(f.p, 4) + ' · ' + f.verdict;
        var td = cell(text, 'sig ' + f.verdict.replace(/ /g, '-'));
        td.colSpan = 10;
        return [cell(f.workflow), cell('vs holdout'), td];
      }
      return [cell(f.workflow), cell(f.arm), cell(f.entered), cell(f.mailed), cell(f.opened),
              cell(f.clicked), cell(f.purchased), cell(money(f.revenue)),
              cell(money(f.verified_revenue)), cell(f.converted),
              cell(duration(f.median_click_s)), cell(duration(f.median_order_s))];
    }, 'no runs yet');
  }

  // --- the Flows tab and a flow's page --------------------------------------------------------

  // The cells of each workflow's row on the Flows tab: <tr data-flow=NAME><td data-k=KEY>.
  function flowCells(key, value) {
    var rows = document.querySelectorAll('#flows-body tr[data-flow]');
    for (var i = 0; i < rows.length; i++) {
      var td = rows[i].querySelector('[data-k="' + key + '"]');
      if (td) td.textContent = value(rows[i].dataset.flow);
    }
  }

  function applyFlowFunnel(rows) {
    ['entered', 'mailed', 'clicked', 'converted', 'revenue'].forEach(function (key) {
      flowCells(key, function (flow) {
        var total = 0;
        rows.forEach(function (r) {
          if (r.workflow === flow && r.arm !== 'holdout' && r.arm !== 'lift') total += r[key];
        });
        return key === 'revenue' ? money(total) : total;
      });
    });
    var flow = document.body.dataset.flow;
    if (!flow || !$('flow-funnel-body')) return;
    fill('flow-funnel-body', rows.filter(function (r) { return r.workflow === flow; }),
      function (r) {
        if (r.arm === 'lift') {
          var td = cell('conversion ' + percent(r.rate) + ' vs ' + percent(r.holdout_rate) +
                        ' · p ' + (r.p === null ? '–' : r.p) + ' · ' + r.verdict,
                        'sig ' + r.verdict.replace(/ /g, '-'));
          td.colSpan = 8;
          return [cell('vs holdout'), td];
        }
        return [cell(r.arm), cell(r.entered), cell(r.mailed), cell(r.opened), cell(r.clicked),
                cell(r.converted), cell(percent(r.conversion)), cell(money(r.revenue)),
                cell(money(r.verified_revenue))];
      }, 'no runs in the last 30 days');
  }

  function percent(value) {  // as the page's `percent` filter
    return value === null || value === undefined ? '–' : (value * 100).toFixed(1) + '%';
  }

  function reasons(ul, key, items) {
    var fragment = document.createDocumentFragment();
    items.forEach(function (item) {
      var li = document.createElement('li');
      li.textContent = key + ': ' + item[0] + ' · ' + item[1];
      fragment.appendChild(li);
    });
    ul.replaceChildren(fragment);
  }

  // A flow's page: the counts at each step (<li data-step=I> with [data-k=KEY] inside).
  function applyFlows(flows) {
    var counts = flows.counts[document.body.dataset.flow];
    if (!counts || !$('flow-steps')) return;
    ['runs', 'open', 'completed'].forEach(function (key) {
      var el = $('flow-' + key);
      if (el) el.textContent = counts[key];
    });
    var nodes = document.querySelectorAll('#flow-steps li[data-step]');
    for (var i = 0; i < nodes.length; i++) {
      var n = counts.steps[Number(nodes[i].dataset.step)];
      if (!n) continue;
      ['entered', 'waiting', 'sent', 'done'].forEach(function (key) {
        var el = nodes[i].querySelector('[data-k="' + key + '"]');
        if (el) el.textContent = n[key];
      });
      ['skipped', 'exited'].forEach(function (key) {
        var ul = nodes[i].querySelector('ul[data-k="' + key + '"]');
        if (ul) reasons(ul, key, n[key]);
      });
    }
  }

  function applyLatency(latency) {
    var labels = [['decision', 'event → decision (ack), since start'],
                  ['decision_recent', 'event → decision (ack), recent'],
                  ['due_to_sent', 'due → sent']];
    fill('latency-body', labels, function (pair) {
      var l = latency[pair[0]];
      return [cell(pair[1]), cell(l.count), cell(ms(l.p50_ms)), cell(ms(l.p90_ms)),
              cell(ms(l.p99_ms))];
    }, '');
  }

  function applyPolls(polls) {
    fill('poll-body', polls, function (p) {
      return [cell(p.name), cell(clock(p.last_run)), cell(clock(p.next_run)),
              cell(p.lag_s === null || p.lag_s === undefined ? '' : Math.round(p.lag_s) + ' s'),
              cell(p.failures, p.failures ? 'bad' : ''), cell(p.events), cell(p.last_error)];
    }, 'no [[poll]] sources configured');
  }

  function applyAlerts(alerts) {
    if (!$('alerts')) return;
    list('alerts', alerts.active, function (a) { return a.alert + ': ' + a.message; }, 'none');
    var items = $('alerts').children;
    for (var i = 0; i < items.length && alerts.active.length; i++) items[i].className = 'alert';
    list('alert-history', alerts.history, function (h) {
      return clock(h.at) + ' ' + h.alert + ' ' + h.state + ': ' + h.message;
    }, 'none');
  }

  function apply(data, reset) {
    state.updates += 1;
    if (data.counters) applyCounters(data.counters);
    if (data.rates) addRates(data.rates, reset);
    if (data.events) addEvents(data.events, reset);
    if (data.timers) applyTimers(data.timers);
    if (data.runs) applyRuns(data.runs);
    if (data.mail) applyMail(data.mail);
    if (data.funnel) applyFunnel(data.funnel);
    if (data.funnel) applyFlowFunnel(data.funnel);
    if (data.flows) applyFlows(data.flows);
    if (data.funnel_at && $('funnel-at')) $('funnel-at').textContent = stamp(data.funnel_at);
    if (data.latency) applyLatency(data.latency);
    if (data.alerts) applyAlerts(data.alerts);
    if (data.polls) applyPolls(data.polls);
  }

  // --- the stream -----------------------------------------------------------------------------

  apply(JSON.parse($('snapshot').textContent), true);
  if ($('filter-name')) $('filter-name').addEventListener('input', renderFeed);
  if ($('filter-person')) $('filter-person').addEventListener('input', renderFeed);
  window.rtFollow(
    function () { return '/dashboard/stream?since=' + encodeURIComponent(state.lastId); },
    function (e, snapshot) {
      state.lastId = e.lastEventId;
      apply(JSON.parse(e.data), snapshot);
    }
  );
})();
