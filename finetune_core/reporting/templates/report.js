// Draws every figure of the page from the JSON block whose id is 'figures'.
(function () {
  var figs = JSON.parse(document.getElementById('figures').textContent);
  var config = {responsive: true, displaylogo: false};
  Object.keys(figs).forEach(function (id) {
    var el = document.getElementById(id);
    if (el) { Plotly.newPlot(el, figs[id].data, figs[id].layout, config); }
  });
})();
