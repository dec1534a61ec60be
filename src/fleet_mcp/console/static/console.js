// fleet-mcp console: the only script besides htmx (no inline scripts: the CSP forbids them).
// Copy buttons: <button data-copy="ID"> copies the text of element ID.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
    button.setAttribute("aria-live", "polite");
  });
});
