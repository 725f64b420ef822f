// digitrec drawing page: draw (pointer events: mouse, touch, pen) or upload, POST to /v1/predict,
// show the digit, the probability bars and the 28x28 image the model saw. No dependencies.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const pad = $("pad");
  const layout = $("layout");
  const fileInput = $("file-input");
  const undoButton = $("undo-button");
  const digitOut = $("digit");
  const confidenceOut = $("confidence");
  const chips = $("chips");
  const seenImage = $("input-image");
  const announce = $("announce");
  const errorBox = $("error");
  const fileNote = $("file-note");
  const busy = $("busy");
  const resultCard = $("result-card");
  const barsTitle = $("bars-title");
  const strip = $("seen-strip");
  const seenFrame = $("seen-frame");
  const seenCaption = $("seen-caption");

  const INK = "#111827";
  // Stroke width as a fraction of the pad's height: about 2.5 pixels of a 28-pixel-tall MNIST grid,
  // which is what MNIST's pen looks like once a digit drawn across most of the pad is scaled to 20x20.
  const STROKE_PER_HEIGHT = 2.5 / 28;

  const state = {
    mode: "single",
    strokes: [], // each stroke: array of [x, y] in fractions of the pad's width and height
    current: null, // the stroke being drawn
    pointerId: null,
    background: null, // an uploaded image drawn under the strokes (ImageBitmap)
    upload: null, // the uploaded File, sent as is while nothing is drawn over it
    seq: 0, // request counter: a response to an older request is dropped
  };

  // ---- probability bars --------------------------------------------------------------------
  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.className = "bar";
    li.dataset.digit = String(d);
    li.innerHTML =
      `<span class="bar-label">${d}</span>` +
      `<span class="bar-track" aria-hidden="true"><span class="bar-fill"></span></span>` +
      `<span class="bar-value">–</span>`;
    $("bars").appendChild(li);
    bars.push({ li, fill: li.querySelector(".bar-fill"), value: li.querySelector(".bar-value") });
  }

  function showBars(probabilities, winner) {
    bars.forEach((bar, d) => {
      const p = probabilities ? probabilities[d] : null;
      bar.fill.style.width = p == null ? "0%" : `${(p * 100).toFixed(1)}%`;
      bar.value.textContent = p == null ? "–" : percent(p);
      bar.li.dataset.winner = String(d === winner);
      bar.li.setAttribute("aria-label", p == null ? `${d}: no value` : `${d}: ${percent(p)}`);
    });
  }

  function percent(p) {
    const v = p * 100;
    return v >= 99.95 ? "100%" : v < 0.1 && v > 0 ? "<0.1%" : `${v.toFixed(1)}%`;
  }

  // ---- drawing -----------------------------------------------------------------------------
  function fitCanvas() {
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(rect.width * dpr));
    const h = Math.max(1, Math.round(rect.height * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    render(ctx, w, h, false);
  }

  function render(target, w, h, opaque) {
    target.setTransform(1, 0, 0, 1, 0, 0);
    target.clearRect(0, 0, w, h);
    if (opaque) {
      target.fillStyle = "#fff"; // what the server gets: dark ink on white paper
      target.fillRect(0, 0, w, h);
    }
    if (state.background) {
      const bg = state.background;
      const scale = Math.min(w / bg.width, h / bg.height);
      const bw = bg.width * scale;
      const bh = bg.height * scale;
      target.drawImage(bg, (w - bw) / 2, (h - bh) / 2, bw, bh);
    }
    target.strokeStyle = INK;
    target.fillStyle = INK;
    target.lineCap = "round";
    target.lineJoin = "round";
    target.lineWidth = h * STROKE_PER_HEIGHT;
    for (const stroke of state.strokes) drawStroke(target, stroke, w, h);
  }

  function drawStroke(target, stroke, w, h) {
    const pts = stroke.map(([x, y]) => [x * w, y * h]);
    if (pts.length === 1) {
      target.beginPath();
      target.arc(pts[0][0], pts[0][1], target.lineWidth / 2, 0, 2 * Math.PI);
      target.fill();
      return;
    }
    // Quadratic curves through the midpoints: smooth lines from sparse pointer samples.
    target.beginPath();
    target.moveTo(pts[0][0], pts[0][1]);
    for (let i = 1; i < pts.length - 1; i++) {
      const mx = (pts[i][0] + pts[i + 1][0]) / 2;
      const my = (pts[i][1] + pts[i + 1][1]) / 2;
      target.quadraticCurveTo(pts[i][0], pts[i][1], mx, my);
    }
    const last = pts[pts.length - 1];
    target.lineTo(last[0], last[1]);
    target.stroke();
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) / rect.width;
    const y = (event.clientY - rect.top) / rect.height;
    return [Math.min(1, Math.max(0, x)), Math.min(1, Math.max(0, y))];
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (state.current || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    state.pointerId = event.pointerId;
    state.current = [point(event)];
    state.strokes.push(state.current);
    pad.dataset.empty = "false";
    fitCanvas();
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!state.current || event.pointerId !== state.pointerId) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) state.current.push(point(e));
    fitCanvas();
  });

  function endStroke(event) {
    if (!state.current || event.pointerId !== state.pointerId) return;
    state.current = null;
    state.pointerId = null;
    updateUndo();
    predict();
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  new ResizeObserver(fitCanvas).observe(pad);

  function updateUndo() {
    undoButton.disabled = state.strokes.length === 0;
  }

  function isEmpty() {
    return state.strokes.length === 0 && !state.background && !state.upload;
  }

  function clearAll() {
    state.strokes = [];
    state.current = null;
    state.pointerId = null;
    state.background = null;
    state.upload = null;
    state.seq++; // drop any answer still on its way
    pad.dataset.empty = "true";
    fileNote.hidden = true;
    hideError();
    setBusy(false);
    resetResult();
    updateUndo();
    fitCanvas();
  }

  function undo() {
    if (!state.strokes.length) return;
    state.strokes.pop();
    updateUndo();
    fitCanvas();
    if (isEmpty()) clearAll();
    else predict();
  }

  $("clear-button").addEventListener("click", clearAll);
  undoButton.addEventListener("click", undo);

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type === "text") return;
    if (event.key === "Escape") {
      event.preventDefault();
      clearAll();
    } else if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    }
  });

  // ---- modes -------------------------------------------------------------------------------
  const TEXT = {
    single: {
      title: "Draw a digit",
      help: "Mouse, finger or pen: digitrec reads it after every stroke.",
      hint: "Draw a digit here",
    },
    multi: {
      title: "Write a number",
      help: "Write several digits side by side, left to right. digitrec reads the whole number.",
      hint: "Write a number here",
    },
  };

  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      if (!radio.checked) return;
      state.mode = radio.value;
      layout.dataset.mode = state.mode;
      $("draw-title").textContent = TEXT[state.mode].title;
      $("draw-help").textContent = TEXT[state.mode].help;
      $("pad-hint-text").textContent = TEXT[state.mode].hint;
      clearAll();
    });
  }

  // ---- upload (button, or drop an image on the pad) ----------------------------------------
  $("upload-button").addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    if (fileInput.files && fileInput.files[0]) useFile(fileInput.files[0]);
    fileInput.value = ""; // choosing the same file again still fires "change"
  });
  pad.addEventListener("dragover", (event) => {
    event.preventDefault();
    pad.classList.add("dragover");
  });
  pad.addEventListener("dragleave", () => pad.classList.remove("dragover"));
  pad.addEventListener("drop", (event) => {
    event.preventDefault();
    pad.classList.remove("dragover");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) useFile(file);
  });

  async function useFile(file) {
    clearAll();
    state.upload = file;
    fileNote.textContent = `${file.name || "image"} · ${formatBytes(file.size)}`;
    fileNote.hidden = false;
    try {
      state.background = await createImageBitmap(file); // preview; the server decodes the file itself
    } catch {
      state.background = null; // a format the browser cannot show (e.g. TIFF): still send it
    }
    pad.dataset.empty = state.background ? "false" : "true";
    fitCanvas();
    predict();
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  // ---- prediction --------------------------------------------------------------------------
  function drawingAsPng() {
    // The pad at its CSS size, opaque: a few KB of PNG whatever the screen's pixel ratio.
    const rect = canvas.getBoundingClientRect();
    const off = document.createElement("canvas");
    off.width = Math.max(1, Math.round(rect.width));
    off.height = Math.max(1, Math.round(rect.height));
    render(off.getContext("2d"), off.width, off.height, true);
    return new Promise((resolve) => off.toBlob(resolve, "image/png"));
  }

  async function predict() {
    if (isEmpty()) return;
    const seq = ++state.seq;
    setBusy(true); // at once, so "busy" covers the PNG encoding too
    const url = `/v1/predict?include_input=true${state.mode === "multi" ? "&multi=true" : ""}`;
    try {
      let body;
      const headers = {};
      if (state.upload && state.strokes.length === 0) {
        body = new FormData();
        body.append("file", state.upload, state.upload.name || "image");
      } else {
        body = await drawingAsPng();
        headers["Content-Type"] = "image/png";
      }
      const response = await fetch(url, { method: "POST", body, headers });
      const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (seq !== state.seq) return;
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      hideError();
      showResult(data);
    } catch (err) {
      if (seq !== state.seq) return;
      showError(err instanceof TypeError ? "The server cannot be reached." : err.message);
    } finally {
      if (seq === state.seq) setBusy(false);
    }
  }

  function setBusy(on) {
    busy.hidden = !on;
    resultCard.setAttribute("aria-busy", String(on));
  }

  function argmax(values) {
    let best = 0;
    values.forEach((v, i) => {
      if (v > values[best]) best = i;
    });
    return best;
  }

  function showResult(data) {
    const probabilities = data.probabilities || [];
    chips.hidden = true;
    chips.replaceChildren();
    strip.hidden = true;
    strip.replaceChildren();
    seenFrame.hidden = false;
    seenCaption.innerHTML = "The 28&times;28 image<br>the model saw";
    let spoken;
    if (state.mode === "multi") {
      spoken = showNumber(data);
    } else {
      const anyInk = probabilities.some((p) => p > 0);
      const best = anyInk ? argmax(probabilities) : -1;
      if (data.digit != null) {
        digitOut.textContent = String(data.digit);
        digitOut.dataset.state = "value";
        confidenceOut.replaceChildren(strongText(percent(data.confidence)), " sure");
        spoken = `Read ${data.digit}, ${Math.round(data.confidence * 100)} percent sure.`;
      } else if (data.rejected === "not_a_digit") {
        // The model spread its belief over many digits: a letter, a scribble, a drawing.
        digitOut.textContent = "?";
        digitOut.dataset.state = "none";
        confidenceOut.textContent = "That doesn't look like a digit";
        spoken = "That doesn't look like a digit.";
      } else {
        digitOut.textContent = "?";
        digitOut.dataset.state = "none";
        confidenceOut.textContent = anyInk
          ? `Too unsure to say (best guess ${best}, ${percent(probabilities[best])})`
          : "No digit found";
        spoken = anyInk ? "Too unsure to say." : "No digit found.";
      }
      if (data.several_digits) {
        confidenceOut.append(` (it looks like ${data.several_digits} digits: switch to "A number" to read them all)`);
      }
      showBars(anyInk ? probabilities : null, data.digit != null ? best : -1);
      showSeen(data.input_image);
    }
    announce.textContent = spoken;
  }

  function showNumber(data) {
    const digits = data.digits || [];
    const images = data.input_images || [];
    const number = data.number;
    if (!number) {
      digitOut.textContent = "?";
      digitOut.dataset.state = "none";
      confidenceOut.textContent = "No digits found";
      showBars(null, -1);
      showSeen(null);
      return "No digits found.";
    }
    digitOut.textContent = number;
    digitOut.dataset.state = "value";
    const count = `${digits.length} digit${digits.length === 1 ? "" : "s"}, `;
    confidenceOut.replaceChildren(count, strongText(percent(data.confidence)), " sure of the whole number");
    // One chip per digit; the selected chip's probabilities fill the bars.
    const select = (index) => {
      chips.querySelectorAll(".chip").forEach((chip, i) => chip.setAttribute("aria-pressed", String(i === index)));
      strip.querySelectorAll("img").forEach((img, i) => (img.dataset.selected = String(i === index)));
      const d = digits[index];
      barsTitle.textContent = `Probability per digit: digit ${index + 1} of ${digits.length}`;
      showBars(d.probabilities, d.digit == null ? -1 : argmax(d.probabilities));
    };
    digits.forEach((d, i) => {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.dataset.low = String(d.digit == null);
      const label = d.rejected === "not_a_digit" ? "\u2715" : d.digit == null ? "?" : String(d.digit);
      chip.setAttribute("aria-label", `Digit ${i + 1}: ${label}, ${percent(d.confidence)} sure`);
      chip.append(Object.assign(document.createElement("b"), { textContent: label }), percent(d.confidence));
      chip.addEventListener("click", () => select(i));
      chips.appendChild(chip);
    });
    chips.hidden = false;
    if (images.length) {
      seenFrame.hidden = true;
      images.forEach((src, i) => {
        const img = document.createElement("img");
        img.src = src;
        img.alt = `Digit ${i + 1} as the model saw it, 28 by 28 pixels`;
        strip.appendChild(img);
      });
      strip.hidden = false;
      seenCaption.innerHTML = "What the model saw,<br>28&times;28 per digit";
    }
    select(0);
    return `Read the number ${number.split("").join(" ")}, ${Math.round(data.confidence * 100)} percent sure.`;
  }

  function strongText(text) {
    const strong = document.createElement("strong");
    strong.textContent = text;
    return strong;
  }

  function showSeen(src) {
    if (src) {
      seenImage.src = src;
      seenImage.alt = "The 28 by 28 image the model saw";
      seenImage.hidden = false;
    } else {
      seenImage.hidden = true;
      seenImage.removeAttribute("src");
      seenImage.alt = "";
    }
  }

  function resetResult() {
    digitOut.textContent = "–";
    digitOut.dataset.state = "empty";
    confidenceOut.textContent = state.mode === "multi" ? "Write a number to start" : "Draw something to start";
    chips.hidden = true;
    chips.replaceChildren();
    strip.hidden = true;
    strip.replaceChildren();
    seenFrame.hidden = false;
    showSeen(null);
    barsTitle.textContent = "Probability per digit";
    showBars(null, -1);
    announce.textContent = "";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function hideError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  // ---- model status ------------------------------------------------------------------------
  async function loadModelStatus(triesLeft) {
    const status = $("model-status");
    const text = $("model-text");
    try {
      const response = await fetch("/v1/models");
      const data = await response.json();
      if (response.ok) {
        const model = data.models[0] || {};
        status.dataset.state = "ready";
        text.textContent = `Model ${model.name || "loaded"} · ready`;
        return;
      }
      text.textContent = data.error || "Model loading…";
    } catch {
      text.textContent = "Server unreachable";
      status.dataset.state = "down";
    }
    if (triesLeft > 0) setTimeout(() => loadModelStatus(triesLeft - 1), 1000);
  }

  pad.dataset.empty = "true";
  resetResult();
  updateUndo();
  fitCanvas();
  loadModelStatus(120);
})();
