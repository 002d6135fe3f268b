// Optional auto-refresh for pages that offer it (data-refresh="<seconds>" on <body>): the pages are complete
// without it. Off unless the person ticks the box; the choice is kept in localStorage. A page is not reloaded
// while someone is typing in one of its forms.
"use strict";

(() => {
  const seconds = Number(document.body.dataset.refresh || 0);
  const nav = document.querySelector("header nav");
  if (!seconds || !nav) return;
  const label = document.createElement("label");
  label.className = "refresh";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = localStorage.getItem("bullrq.refresh") === "on";
  label.append(box, ` Refresh every ${seconds} s`);
  nav.prepend(label);
  box.addEventListener("change", () => localStorage.setItem("bullrq.refresh", box.checked ? "on" : "off"));
  setInterval(() => {
    const typing = document.activeElement && document.activeElement.closest("main form");
    if (box.checked && !typing) window.location.reload();
  }, seconds * 1000);
})();
