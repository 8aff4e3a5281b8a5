// Arrow keys move between the thumbnails of the grid (Tab and Enter work without this).
document.addEventListener("keydown", (event) => {
  const grid = document.getElementById("grid");
  if (!grid || !["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"].includes(event.key)) return;
  const links = Array.from(grid.querySelectorAll("a.thumb"));
  const at = links.indexOf(document.activeElement);
  if (at < 0) return;
  const columns = Math.max(1, Math.round(grid.clientWidth / links[0].parentElement.clientWidth));
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[event.key];
  const next = links[at + step];
  if (next) { next.focus(); event.preventDefault(); }
});
