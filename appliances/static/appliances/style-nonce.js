// xterm.js styles its rows with <style> elements it creates and, for 24-bit
// colours, with style attributes; it takes no CSP nonce (xterm.js issue 4445).
// The console page allows <style> elements carrying this response's nonce
// (style-src-elem), so every <style> made on this page gets it at creation,
// before insertion, which is when the browser checks it. Style attributes
// stay forbidden: a style set through setAttribute goes through the CSSOM
// instead, which the policy does not govern. Loaded on the console page only.
(function () {
  "use strict";

  const nonce = document.currentScript.nonce;
  if (!nonce) return;

  const createElement = Document.prototype.createElement;
  Document.prototype.createElement = function (tagName, options) {
    const element = createElement.call(this, tagName, options);
    if (String(tagName).toLowerCase() === "style") element.setAttribute("nonce", nonce);
    return element;
  };

  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style" && this instanceof HTMLElement) {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
  };
})();
