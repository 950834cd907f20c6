// The course website's only script of its own: a "Copy" button on every code cell (no framework, works offline and
// from file://, where the Clipboard API may be refused: then it falls back to a hidden textarea and execCommand).
(function () {
  "use strict";

  function copyWithTextarea(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try {
      return document.execCommand("copy");
    } finally {
      document.body.removeChild(area);
    }
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () {
        return copyWithTextarea(text);
      });
    }
    return Promise.resolve(copyWithTextarea(text));
  }

  function addButton(editor) {
    var code = editor.querySelector("pre");
    if (!code) {
      return;
    }
    var button = document.createElement("button");
    button.type = "button";
    button.className = "kvlab-copy";
    button.textContent = "Copy";
    button.title = "Copy this cell's code";
    button.addEventListener("click", function () {
      copy(code.innerText).then(function () {
        button.textContent = "Copied";
        setTimeout(function () {
          button.textContent = "Copy";
        }, 1500);
      });
    });
    editor.appendChild(button);
  }

  document.querySelectorAll(".jp-CodeCell .jp-InputArea-editor").forEach(addButton);

  // A widget on this page is drawn from the state saved when the chapter ran: say so, since its controls move but
  // nothing recomputes without a kernel.
  document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').forEach(function (view) {
    var note = document.createElement("p");
    note.className = "kvlab-widget-note";
    note.textContent = "A saved widget: it shows the state the chapter was run with. To use it, run the chapter " +
      "in Jupyter.";
    view.parentNode.insertBefore(note, view);
  });
})();
