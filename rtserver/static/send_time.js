// The Send time page, kept live: the server renders it, then the dashboard's stream
// (GET /dashboard/stream, Server-Sent Events) carries its panel as `send_time` in the snapshot
// a new stream starts with and in the updates after something changed (at most every few
// seconds). The heatmaps, the optimal/control table and each bandit step's arms and daily
// shares are drawn again from it, with textContent and SVG attributes only (never HTML), as
// on the live page. Bandit steps come from the config: the page has one panel per step.
(function () {
  'use strict';

  var SVG = 'http://www.w3.org/2000/svg';
  var DAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];
  var PALETTE = ['#2563eb', '#f97316', '#16a34a', '#9333ea', '#dc2626', '#0891b2'];
  var state = { updates: 0, applied: 0 };
  window.rtSendTime = state;  // for tests

  function $(id) { return document.getElementById(id); }

  function percent(value) {  // as the page's `percent` filter
    return value === null || value === undefined ? '–' : (value * 100).toFixed(1) + '%';
  }

  function two(n) { return (n < 10 ? '0' : '') + n; }

  function svg(name, attrs, title) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    if (title !== undefined) {
      var t = document.createElementNS(SVG, 'title');
      t.textContent = title;
      el.appendChild(t);
    }
    return el;
  }

  function paragraph(text, className, id) {
    var p = document.createElement('p');
    p.className = className;
    if (id) p.id = id;
    p.textContent = text;
    return p;
  }

  function heatmap(map, id) {  // as dashboard_charts.html's heatmap macro
    if (map.empty) return [paragraph('No engagement yet.', 'empty', id + '-empty')];
    var root = svg('svg', { 'class': 'heatmap', id: id, viewBox: '0 0 368 114', width: 368,
                            height: 114, role: 'img',
                            'aria-label': 'engagement by hour and weekday' });
    for (var h = 0; h < 24; h += 3) {
      var label = svg('text', { x: 32 + h * 14 + 1, y: 9, 'font-size': 8, fill: '#666' });
      label.textContent = two(h);
      root.appendChild(label);
    }
    map.rows.forEach(function (row, i) {
      var y = 12 + i * 14;
      var day = svg('text', { x: 0, y: y + 10, 'font-size': 9, fill: '#444' });
      day.textContent = row.day;
      root.appendChild(day);
      row.cells.forEach(function (c) {
        root.appendChild(svg('rect', {
          x: 32 + c.hour * 14, y: y, width: 13, height: 13,
          fill: c.shade ? '#2563eb' : '#eef0f3',
          'fill-opacity': c.shade ? (0.08 + 0.92 * c.shade).toFixed(3) : 1,
          'data-share': c.share.toFixed(4),
        }, row.day + ' ' + two(c.hour) + ':00 · ' + percent(c.share)));
      });
    });
    return [root, paragraph('Busiest hours: ' + map.top.join(', '), 'muted')];
  }

  function cells(tr, texts) {
    texts.forEach(function (text) {
      var td = document.createElement('td');
      td.textContent = text;
      tr.appendChild(td);
    });
    return tr;
  }

  function interval(low, high) {
    return low === null || low === undefined ? '– – –' : percent(low) + ' – ' + percent(high);
  }

  function comparison(rows) {
    var body = $('send-time-comparison-body');
    if (!body) return;
    body.replaceChildren.apply(body, rows.map(function (r) {
      return cells(document.createElement('tr'), [
        r.arm, String(r.sends), percent(r.opened.rate), interval(r.opened.low, r.opened.high),
        percent(r.clicked.rate), interval(r.clicked.low, r.clicked.high)]);
    }));
  }

  function shares(panel, days) {  // as dashboard_charts.html's shares macro
    if (!panel.days.length) return [paragraph('No sends in the last ' + days + ' days.', 'empty')];
    var width = Math.max(panel.days.length * 12, 12);
    var root = svg('svg', { 'class': 'shares', viewBox: '0 0 ' + width + ' 80', width: width,
                            height: 80, role: 'img',
                            'aria-label': "each variant's share of sends per day" });
    panel.days.forEach(function (d, i) {
      var top = 0;
      var day = new Date(d.day * 1000).toISOString().slice(0, 10);
      d.shares.forEach(function (share, k) {
        root.appendChild(svg('rect', {
          x: i * 12, y: (top * 80).toFixed(2), width: 10, height: (share * 80).toFixed(2),
          fill: PALETTE[k % PALETTE.length],
        }, day + ' · ' + panel.arms[k].name + ' ' + percent(share) + ' of ' + d.sends));
        top += share;
      });
    });
    return [root];
  }

  function bandit(panel, days) {
    var key = 'bandit-' + panel.workflow + '-' + panel.step;
    var body = $(key + '-arms');
    if (!body) return;  // a step the page was not rendered with (the config changed)
    body.replaceChildren.apply(body, panel.arms.map(function (arm, k) {
      var tr = document.createElement('tr');
      var name = document.createElement('td');
      var swatch = document.createElement('span');
      swatch.className = 'swatch-' + (k % 6);
      swatch.textContent = '■';
      name.appendChild(swatch);
      name.appendChild(document.createTextNode(' ' + arm.name));
      tr.appendChild(name);
      cells(tr, [String(arm.sends), String(arm.successes),
                 arm.sends ? percent(arm.successes / arm.sends) : '–',
                 arm.interval ? percent(arm.interval[0]) + ' – ' + percent(arm.interval[1])
                              : '–']);
      var chance = cells(document.createElement('tr'), [percent(arm.chance_best)]).firstChild;
      chance.className = 'chance';
      tr.appendChild(chance);
      return tr;
    }));
    var box = $(key + '-days');
    if (box) box.replaceChildren.apply(box, shares(panel, days));
  }

  function apply(view) {
    var box = $('shop-heatmap-box');
    if (box) box.replaceChildren.apply(box, heatmap(view.shop, 'shop-heatmap'));
    comparison(view.comparison);
    view.bandits.forEach(function (panel) { bandit(panel, view.days); });
    state.applied += 1;
  }

  function received(e) {
    state.updates += 1;
    var data = JSON.parse(e.data);
    if (data.send_time) apply(data.send_time);
  }

  // No ?since=: the page was not rendered from the hub's snapshot, so the stream starts
  // with one (it holds the panel as it is now).
  window.rtFollow(function () { return '/dashboard/stream'; }, received);
})();
