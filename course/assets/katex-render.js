// Renders the math that pymdownx.arithmatex marked in each page (\( \) inline, \[ \] displayed) with
// the copy of KaTeX in assets/katex/: nothing is fetched from another host, so it works offline.
// Only elements of class "arithmatex" are searched, so a "\(" in prose or code is left alone.
function renderCourseMath() {
  document.querySelectorAll(".arithmatex").forEach(function (element) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      // A formula KaTeX cannot parse is shown in red (.katex-error), an unknown command in errorColor,
      // and the page still works; tests/site_browser.py reports both.
      throwOnError: false,
      errorColor: "#cc0000",
    });
  });
}
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", renderCourseMath);
} else {
  renderCourseMath();
}
