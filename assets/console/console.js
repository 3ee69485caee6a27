// tenantd console: keeps the panels current from the server's stream of
// rendered panels (server-sent events). The server renders and escapes all
// HTML; this only swaps it in.
"use strict";

(function () {
  const panels = document.getElementById("panels");
  const live = document.getElementById("live");
  let source = null;

  function say(text, ok) {
    live.textContent = text;
    live.classList.toggle("ok", ok);
  }

  function connect() {
    source = new EventSource("/stream");
    source.addEventListener("open", () => say("live", true));
    source.addEventListener("panels", (e) => {
      panels.innerHTML = e.data;
      say("live", true);
    });
    source.addEventListener("trouble", (e) => say(e.data, false));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The key may have been revoked: a reload shows the login form.
        fetch("/panels", { credentials: "same-origin" }).then((r) => {
          if (r.status === 401) {
            window.location.reload();
          } else {
            say("reconnecting…", false);
            setTimeout(connect, 2000);
          }
        }, () => {
          say("reconnecting…", false);
          setTimeout(connect, 2000);
        });
      } else {
        say("reconnecting…", false);
      }
    });
  }

  connect();
})();
