// The marking page: one answer at a time, keyboard first. Every change is one request to the
// app's JSON API; the server's reply (the mark as stored) is what the page shows afterwards.
(() => {
  "use strict";

  const data = JSON.parse(document.getElementById("page-data").textContent);
  const token = document.querySelector('meta[name="grader-token"]').content;
  const $ = (id) => document.getElementById(id);
  const list = $("answer-list");
  const rows = Array.from(list.children);
  const rubricRows = Array.from(document.querySelectorAll("#rubric li[data-item]"));
  const items = data.items;   // in position order: key n applies items[n - 1]
  let index = Math.min(Math.max(data.current, 0), data.answers.length - 1);
  let mark = null;            // the current answer's mark as the server last said, or null
  let savedText = { comment: "", adjustment: 0 };
  let loadToken = 0;          // a late reply for an answer the marker already left is ignored

  // --- talking to the server --------------------------------------------------------------

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Grader-Token": token },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let payload = null;
    try { payload = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const error = new Error((payload && payload.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      error.payload = payload;
      throw error;
    }
    return payload;
  }

  function message(text, kind) {
    const box = $("message");
    box.textContent = text || "";
    box.className = "message " + (kind || "");
    box.hidden = !text;
  }

  // --- showing ------------------------------------------------------------------------------

  const answer = () => data.answers[index];
  const fmt = (p) => (Math.round(p * 100) / 100).toString();

  function showMark(newMark) {
    mark = newMark;
    const entry = answer();
    entry.mark = mark;
    entry.state = mark ? (mark.stale ? "stale" : "marked") : "unmarked";
    const applied = new Set(mark ? mark.items : []);
    rubricRows.forEach((row) => row.classList.toggle("applied", applied.has(Number(row.dataset.item))));
    $("mark-points").textContent = mark ? `${fmt(mark.points)} / ${fmt(mark.max_points)}` : "unmarked";
    $("mark-points").className = "points " + entry.state;
    $("mark-status").textContent = mark
      ? `by ${mark.marker} at ${mark.marked_at.replace("T", " ").replace("+00:00", " UTC")} · version ${mark.version}`
      : "";
    $("stale-banner").hidden = !(mark && mark.stale);
    savedText = { comment: mark ? mark.comment : "", adjustment: mark ? mark.adjustment : 0 };
    $("comment").value = savedText.comment;
    $("adjustment").value = savedText.adjustment;
    updateRow(index);
  }

  function updateRow(i) {
    const entry = data.answers[i];
    const row = rows[i];
    row.classList.remove("marked", "stale", "unmarked");
    row.classList.add(entry.state);
    row.querySelector(".row-points").textContent = entry.mark ? fmt(entry.mark.points) : "·";
  }

  function groupMembers(i) {
    const group = data.answers[i].group;
    if (group === null || group === undefined) return [data.answers[i].submission];
    return data.answers.filter((a) => a.group === group).map((a) => a.submission);
  }

  function showGroup() {
    const members = groupMembers(index);
    const box = $("group");
    const inGroup = members.length > 1;
    box.hidden = !inGroup;
    document.querySelectorAll("#rubric .group-apply").forEach((b) => { b.hidden = !inGroup; });
    if (!inGroup) return;
    box.replaceChildren();
    const head = document.createElement("div");
    head.className = "group-head";
    head.textContent = `Answer group ${answer().group}: ${members.length} similar answers — Shift+number applies an item to all of them`;
    box.append(head);
    const names = document.createElement("div");
    names.className = "members";
    members.forEach((submission) => {
      const i = data.answers.findIndex((a) => a.submission === submission);
      const link = document.createElement("a");
      link.href = "?s=" + encodeURIComponent(submission);
      link.textContent = submission;
      link.className = data.answers[i].state + (i === index ? " current" : "");
      link.addEventListener("click", (ev) => { ev.preventDefault(); go(i); });
      names.append(link);
    });
    box.append(names);
  }

  async function load(i) {
    index = i;
    const entry = answer();
    const mine = ++loadToken;
    rows.forEach((row, j) => row.classList.toggle("current", j === i));
    rows[i].scrollIntoView({ block: "nearest" });
    $("submission-name").textContent = entry.submission;
    $("position").textContent = `${i + 1} of ${data.answers.length}`;
    $("flags").replaceChildren(...entry.flags.map((flag) => {
      const span = document.createElement("span");
      span.className = "flag";
      span.textContent = flag;
      return span;
    }));
    history.replaceState(null, "", "?s=" + encodeURIComponent(entry.submission));
    showGroup();
    $("answer-body").textContent = "loading…";
    try {
      const reply = await api("GET", `/api/answer/${encodeURIComponent(data.question)}/${encodeURIComponent(entry.submission)}`);
      if (mine !== loadToken) return;
      // Both fragments are made by the server: the answer sanitized as in the PDF, the evidence
      // from an autoescaped template.
      $("answer-body").innerHTML = reply.answer_html;
      $("evidence").innerHTML = reply.evidence_html;
      $("words").textContent = wordsText(reply);
      $("words").classList.toggle("over", reply.over_limit);
      showMark(reply.mark);
      showGroup();
    } catch (error) {
      if (mine === loadToken) message(`Could not load ${entry.submission}: ${error.message}`, "error");
    }
  }

  function wordsText(reply) {
    return reply.found ? `${reply.words} / ${reply.limit} words` : "";
  }

  // --- marking ------------------------------------------------------------------------------

  function dirty() {
    return $("comment").value !== savedText.comment || Number($("adjustment").value) !== Number(savedText.adjustment);
  }

  async function saveMark(force) {
    if (!force && !dirty()) return true;
    const entry = answer();
    const adjustment = Number($("adjustment").value);
    if (!Number.isFinite(adjustment)) { message("The adjustment is not a number.", "error"); return false; }
    const comment = $("comment").value;
    try {
      const reply = await api("POST", "/api/mark", {
        question: data.question, submission: entry.submission, adjustment, comment,
        base_version: mark ? mark.version : 0,
      });
      if (entry === answer()) showMark(reply.mark);
      message("");
      return true;
    } catch (error) {
      if (error.status === 409) {
        message(`Not saved: ${error.message}. Their version is shown now; your comment was: “${comment}”`, "error");
        if (entry === answer()) showMark(error.payload.mark.version ? error.payload.mark : null);
      } else {
        message(`Not saved: ${error.message}`, "error");
      }
      return false;
    }
  }

  async function applyItem(position, submissions) {
    const item = items[position - 1];
    if (!item) return;
    if (!(await saveMark(false))) return;
    const applied = !(mark && mark.items.includes(item.id));
    const had = (i) => Boolean(data.answers[i].mark && data.answers[i].mark.items.includes(item.id));
    try {
      const reply = await api("POST", "/api/apply", { item: item.id, submissions, applied });
      let delta = 0;
      reply.marks.forEach((m) => {
        const i = data.answers.findIndex((a) => a.submission === m.submission);
        delta += Number(m.items.includes(item.id)) - Number(had(i));
        if (i === index) { showMark(m); return; }
        data.answers[i].mark = m;
        data.answers[i].state = m.stale ? "stale" : "marked";
        updateRow(i);
      });
      const count = document.querySelector(`#rubric li[data-item="${item.id}"] .count`);
      if (count) count.textContent = `${Number.parseInt(count.textContent, 10) + delta}×`;
      message(submissions.length > 1
        ? `${applied ? "Applied" : "Removed"} “${item.text}” ${applied ? "to" : "from"} ${submissions.length} answers of this group.`
        : "", "info");
      showGroup();
    } catch (error) {
      message(`Not applied: ${error.message}`, "error");
    }
  }

  async function confirmMark() {
    await saveMark(true);
  }

  async function clearMark() {
    try {
      await api("POST", "/api/clear", { question: data.question, submission: answer().submission });
      showMark(null);
      message("");
    } catch (error) {
      message(`Not cleared: ${error.message}`, "error");
    }
  }

  async function go(i) {
    if (i < 0 || i >= data.answers.length) return;
    if (!(await saveMark(false))) return;
    message("");
    await load(i);
  }

  function nextUnmarked() {
    for (let step = 1; step <= data.answers.length; step++) {
      const i = (index + step) % data.answers.length;
      if (data.answers[i].state !== "marked") return go(i);
    }
    message("Every answer of this question is marked.", "info");
  }

  // --- the rubric editor (every change reloads the page: points re-score every answer) -------

  async function rubricChange(call) {
    try {
      await call();
      location.reload();
    } catch (error) {
      message(`Rubric not changed: ${error.message}`, "error");
    }
  }

  document.querySelectorAll("#rubric-editor tr[data-item]").forEach((row) => {
    const id = row.dataset.item;
    row.querySelector(".edit-save").addEventListener("click", () => rubricChange(() => api("POST", `/api/items/${id}`, {
      text: row.querySelector(".edit-text").value, points: Number(row.querySelector(".edit-points").value),
    })));
    row.querySelector(".edit-delete").addEventListener("click", () => {
      if (confirm("Delete this rubric item? It is removed from every answer it is applied to.")) {
        rubricChange(() => api("POST", `/api/items/${id}/delete`));
      }
    });
  });
  $("add-item").addEventListener("click", () => rubricChange(() => api("POST", "/api/items", {
    question: data.question, text: $("new-text").value, points: Number($("new-points").value),
  })));

  // --- wiring -------------------------------------------------------------------------------

  rows.forEach((row, i) => row.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); go(i); }));
  rubricRows.forEach((row) => {
    const position = Number(row.dataset.position);
    row.querySelector(".apply").addEventListener("click", () => applyItem(position, [answer().submission]));
    row.querySelector(".group-apply").addEventListener("click", () => applyItem(position, groupMembers(index)));
  });
  $("prev").addEventListener("click", () => go(index - 1));
  $("next").addEventListener("click", () => go(index + 1));
  $("save").addEventListener("click", () => saveMark(true));
  $("confirm").addEventListener("click", confirmMark);
  $("clear").addEventListener("click", clearMark);
  $("comment").addEventListener("change", () => saveMark(false));
  $("adjustment").addEventListener("change", () => saveMark(false));

  const typing = (target) => target instanceof Element && (target.closest("input, textarea, select, [contenteditable]") !== null);

  document.addEventListener("keydown", (ev) => {
    if (typing(ev.target)) {
      if (ev.key === "Escape") ev.target.blur();   // blur fires "change": the text is saved
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const digit = /^(?:Digit|Numpad)([1-9])$/.exec(ev.code || "") || (/^[1-9]$/.test(ev.key) ? [null, ev.key] : null);
    if (digit) {
      ev.preventDefault();
      const position = Number(digit[1]);
      applyItem(position, ev.shiftKey ? groupMembers(index) : [answer().submission]);
      return;
    }
    const actions = {
      j: () => go(index + 1), ArrowDown: () => go(index + 1), ArrowRight: () => go(index + 1),
      k: () => go(index - 1), ArrowUp: () => go(index - 1), ArrowLeft: () => go(index - 1),
      u: nextUnmarked, m: confirmMark,
      c: () => $("comment").focus(), a: () => { $("adjustment").focus(); $("adjustment").select(); },
    };
    if (actions[ev.key]) {
      ev.preventDefault();
      actions[ev.key]();
    }
  });

  window.addEventListener("beforeunload", (ev) => { if (dirty()) { ev.preventDefault(); ev.returnValue = ""; } });

  load(index);
})();
