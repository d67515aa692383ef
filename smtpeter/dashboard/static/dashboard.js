// Copy buttons: <button class="copy" data-copy="TEXT">. No other script runs on these pages.
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) return;
  event.preventDefault();
  navigator.clipboard.writeText(button.getAttribute("data-copy") || "").then(function () {
    button.textContent = "Copied";
  });
});
