// MathJax configuration for pymdownx.arithmatex (generic mode): typeset \( \) and \[ \]
// inside elements of class "arithmatex" only, and again after each instant-navigation load.
// MathJax itself is vendored next to this file (vendor/mathjax/tex-svg-full.js, see
// vendor/mathjax/VENDORED.txt): SVG output needs no font files and the "full" build holds
// every TeX extension, so a page never fetches anything else, online or off.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  svg: {
    fontCache: "global",
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
