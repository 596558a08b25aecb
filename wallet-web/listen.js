// The microphone's samples, from the audio thread to the page: an
// AudioWorklet processor that hands on its first input channel in chunks
// of 2048 samples (43 ms at 48 kHz), for the beacon decoder
// (sonotap/beacon.js) the page runs. It outputs silence.

class Listen extends AudioWorkletProcessor {
  chunk = new Float32Array(2048);
  filled = 0;

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (!channel) return true;
    let at = 0;
    while (at < channel.length) {
      const n = Math.min(channel.length - at, this.chunk.length - this.filled);
      this.chunk.set(channel.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === this.chunk.length) {
        this.port.postMessage(this.chunk, [this.chunk.buffer]);
        this.chunk = new Float32Array(2048);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("sonotap-listen", Listen);
