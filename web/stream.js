// One answer's events put back in order: the page's half of the resumable-stream contract (docs/request-path.md, client
// contract). The same rule as aigw/stream_assembler.py, which `aigw chat` uses; a browser test feeds both the
// same shuffled, duplicated events and expects the same result.
//
// Every `responses` event carries `seq` (0, 1, 2 … per request); a replay may merge consecutive deltas into one
// carrying `firstSeq`..`seq`. Keep an event when its first seq is the next expected, drop what was had, hold what
// is ahead until the hole before it is filled (the live stream catching up, or a resume with
// `afterSeq = lastSeq`). A merged delta overlapping what was delivered is trimmed by the text of the seqs had.

const FINAL_TYPES = new Set(["end", "error"]);

function span(event) {
  const seq = event.seq;
  if (!Number.isInteger(seq)) return null;
  const first = event.firstSeq;
  return Number.isInteger(first) && first <= seq ? [first, seq] : [seq, seq];
}

export class StreamAssembler {
  constructor() {
    this.nextSeq = 0;
    this.finished = false;
    this._ahead = new Map(); // first seq -> event, held for a hole
    this._seqText = new Map(); // each delivered seq's delta text ("" for other events)
    this._mergedInto = new Set(); // seqs delivered inside another event's merged text
  }

  /** The last seq delivered in order (-1 before any): a resume's `afterSeq`. */
  get lastSeq() {
    return this.nextSeq - 1;
  }

  /** Events are held behind a hole: a resume would fill it. */
  get hasGap() {
    return this._ahead.size > 0;
  }

  /** The events now deliverable, in order: this one and any it unblocked; [] for a duplicate or a hold. */
  offer(event) {
    if (this.finished) return [];
    const covered = span(event);
    if (covered === null) return this._deliver(event);
    let [first] = covered;
    const last = covered[1];
    if (last < this.nextSeq) return [];
    if (first < this.nextSeq) {
      const trimmed = this._trim(event, first);
      if (trimmed === null) return [];
      event = trimmed;
      first = this.nextSeq;
    }
    if (first > this.nextSeq) {
      const held = this._ahead.get(first);
      if (!held || span(held)[1] < last) this._ahead.set(first, event);
      return [];
    }
    const out = this._deliver(event);
    while (!this.finished && this._ahead.has(this.nextSeq)) {
      const waiting = this._ahead.get(this.nextSeq);
      this._ahead.delete(this.nextSeq);
      out.push(...this._deliver(waiting));
    }
    for (const key of [...this._ahead.keys()]) if (key < this.nextSeq) this._ahead.delete(key);
    return out;
  }

  _trim(event, first) {
    if (event.type !== "delta" || this._mergedInto.has(first)) return null;
    let had = "";
    for (let s = first; s < this.nextSeq; s += 1) had += this._seqText.get(s) || "";
    const text = String(event.text ?? "");
    if (!text.startsWith(had)) return null;
    return { ...event, text: text.slice(had.length), firstSeq: this.nextSeq };
  }

  _deliver(event) {
    const covered = span(event);
    if (covered !== null) {
      for (let s = covered[0] + 1; s <= covered[1]; s += 1) {
        this._seqText.set(s, "");
        this._mergedInto.add(s);
      }
      this._seqText.set(covered[0], event.type === "delta" ? String(event.text ?? "") : "");
      this.nextSeq = covered[1] + 1;
    }
    if (FINAL_TYPES.has(event.type)) {
      this.finished = true;
      this._ahead.clear();
    }
    return [event];
  }
}
