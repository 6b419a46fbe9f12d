// The dashboard's live stream, shared by its pages. rtFollow(url, received) follows the SSE
// stream at url() (asked again at each reconnect, so a page can resume where it was) and calls
// received(event, isSnapshot) for each snapshot and update; #live shows the state. The browser
// reconnects by itself; once it gives up, a HEAD tells whether the session ended (to the login
// page) or the server is away (try again in 5 s).
(function () {
  'use strict';

  function live(on, text) {
    var el = document.getElementById('live');
    if (!el) return;
    el.className = on ? 'on' : 'off';
    el.textContent = text;
  }

  window.rtFollow = function (url, received) {
    function connect() {
      var source = new EventSource(url());
      source.onopen = function () { live(true, 'live'); };
      source.addEventListener('snapshot', function (e) { received(e, true); });
      source.addEventListener('update', function (e) { received(e, false); });
      source.onerror = function () {
        if (source.readyState !== EventSource.CLOSED) {
          live(false, 'reconnecting');  // with Last-Event-ID
          return;
        }
        live(false, 'disconnected');
        fetch('/dashboard/stream', { method: 'HEAD', credentials: 'same-origin' })
          .then(function (r) {
            if (r.status === 401) window.location.assign('/dashboard/login');
            else setTimeout(connect, 5000);
          })
          .catch(function () { setTimeout(connect, 5000); });
      };
    }
    connect();
  };
})();
