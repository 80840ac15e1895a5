// The live page: one session at a time. The session is created over REST, its video and
// audio come back over WebRTC, and the microphone goes up as the peer's audio track (the
// server hears it as speech; a second copy over the WebSocket would be queued twice). The
// page measures the microphone's loudness itself, for the meter and for tests. No library,
// no build step: the page runs as served.
"use strict";

// How often the statistics refresh: the browser's own getStats() and the server's view.
const STATS_EVERY_MS = 1000;
const SERVER_VIEW_EVERY_MS = 2000;
// An offer goes to the server with all its ICE candidates (the server does not trickle);
// gathering on loopback takes milliseconds, this bounds it on odd networks.
const ICE_GATHERING_MS = 5000;
// Microphone levels kept for the statistics and for tests: two minutes of 20 ms blocks.
const LEVELS_KEPT = 6000;
const KEY_STORE = "dh-live-api-key";

const $ = (id) => document.getElementById(id);

// Everything a test (or a curious user in the console) may read about the session.
const live = {
  session: null, // the server's document of the session
  pc: null,
  microphone: null, // {stream, context, node}
  stats: {}, // the last figures shown in the table
  micLevels: [], // [{t: performance.now() in ms, rms}] of each 20 ms block heard
  micBlocksHeard: 0,
  errors: [],
};
window.live = live;

function apiKey() {
  return $("api-key").value.trim();
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
  if (isError) live.errors.push(text);
}

// The message of an error answer: /v1 answers carry {error: {stage, message}}; anything
// else (a proxy's page) is shown by its status.
async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const error = body.error || body;
    if (error.message) detail = error.stage ? `${error.stage}: ${error.message}` : error.message;
    else if (body.detail) detail = String(body.detail);
  } catch (_) {
    // not JSON: the status line says enough
  }
  return new Error(detail);
}

async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await failure(response);
    error.status = response.status;
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

function sessionPath(suffix = "") {
  return `/v1/sessions/${encodeURIComponent(live.session.id)}${suffix}`;
}

async function loadAvatars() {
  const select = $("avatar");
  try {
    const page = await api("GET", "/v1/avatars");
    const ready = page.items.filter((avatar) => avatar.state === "ready");
    select.replaceChildren();
    for (const avatar of ready) {
      const option = document.createElement("option");
      option.value = avatar.id;
      option.textContent = `${avatar.name} (${avatar.width}×${avatar.height}, ${avatar.fps} fps)`;
      select.append(option);
    }
    if (ready.length === 0) {
      const option = document.createElement("option");
      option.value = "";
      option.textContent = "no prepared avatar: upload one to /v1/avatars";
      select.append(option);
    }
    setStatus(live.session ? $("status").textContent : "not connected");
  } catch (error) {
    if (error.status === 401 && !apiKey()) {
      // Not a fault: a protected server, and no key given yet. Ask for it.
      select.replaceChildren(new Option("enter the API key above", ""));
      setStatus("this server needs an API key");
      return;
    }
    select.replaceChildren(new Option("could not list avatars", ""));
    setStatus(`avatars: ${error.message}`, true);
  }
}

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, ICE_GATHERING_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function openMicrophone() {
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
  } catch (error) {
    setStatus(`no microphone (${error.name}); you can still send a file`);
    return null;
  }
}

// The microphone's loudness, 20 ms at a time, while it streams over the peer connection.
async function meterMicrophone(stream) {
  const context = new AudioContext();
  await context.audioWorklet.addModule("/live/pcm-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "pcm-tap");
  node.port.onmessage = (event) => {
    const block = event.data;
    let power = 0;
    for (let i = 0; i < block.length; i++) power += block[i] * block[i];
    const rms = Math.sqrt(power / block.length);
    live.micLevels.push({ t: performance.now(), rms });
    if (live.micLevels.length > LEVELS_KEPT) live.micLevels.shift();
    live.micBlocksHeard += 1;
    $("mic-level").value = Math.min(1, rms * 4);
  };
  source.connect(node);
  // Not to the speakers: connected to nothing, a worklet's graph would not run.
  const sink = context.createGain();
  sink.gain.value = 0;
  node.connect(sink).connect(context.destination);
  live.microphone = { stream, context, node };
}

async function connect() {
  const avatarId = $("avatar").value;
  if (!avatarId) {
    setStatus("pick a prepared avatar first", true);
    return;
  }
  setButtons("connecting");
  try {
    setStatus("creating the session…");
    live.session = await api("POST", "/v1/sessions", { avatar_id: avatarId });
    const pc = new RTCPeerConnection();
    live.pc = pc;
    pc.addEventListener("track", (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (event.track.kind === "video") $("video").srcObject = stream;
      else $("audio").srcObject = stream;
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") setStatus("the media connection failed", true);
      else if (pc.connectionState === "connected") setStatus("connected: talk, or send a file");
    });
    pc.addTransceiver("video", { direction: "recvonly" });
    const microphone = $("use-mic").checked ? await openMicrophone() : null;
    if (microphone) {
      pc.addTransceiver(microphone.getAudioTracks()[0], {
        direction: "sendrecv",
        streams: [microphone],
      });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    setStatus("negotiating media…");
    const answer = await api("POST", sessionPath("/webrtc"), {
      sdp: pc.localDescription.sdp,
      type: pc.localDescription.type,
    });
    await pc.setRemoteDescription(answer);
    if (microphone) await meterMicrophone(microphone);
    setButtons("connected");
    $("stat-session").textContent = live.session.id;
    if (pc.connectionState !== "connected") setStatus("waiting for media…");
  } catch (error) {
    setStatus(`connect: ${error.message}`, true);
    await disconnect(false);
  }
}

async function interrupt() {
  try {
    await api("POST", sessionPath("/interrupt"));
    setStatus("interrupted");
  } catch (error) {
    setStatus(`interrupt: ${error.message}`, true);
  }
}

async function sendSpeech(event) {
  event.preventDefault();
  const file = $("speech-file").files[0];
  if (!file || !live.session) return;
  const form = new FormData();
  form.append("audio", file, file.name);
  try {
    setStatus(`sending ${file.name}…`);
    await api("POST", sessionPath("/speech"), form);
    setStatus(`speaking ${file.name}`);
  } catch (error) {
    setStatus(`speech: ${error.message}`, true);
  }
}

async function disconnect(clearStatus = true) {
  const { session, pc, microphone } = live;
  live.microphone = null;
  live.pc = null;
  if (microphone) {
    microphone.stream.getTracks().forEach((track) => track.stop());
    await microphone.context.close();
  }
  if (pc) pc.close();
  $("video").srcObject = null;
  $("audio").srcObject = null;
  live.session = null;
  if (session) {
    try {
      await api("DELETE", `/v1/sessions/${encodeURIComponent(session.id)}`);
    } catch (error) {
      setStatus(`disconnect: ${error.message}`, true);
      clearStatus = false;
    }
  }
  setButtons("idle");
  if (clearStatus) setStatus("not connected");
}

function setButtons(state) {
  const connected = state === "connected";
  $("connect").disabled = state !== "idle";
  $("interrupt").disabled = !connected;
  $("disconnect").disabled = state === "idle";
  $("send-speech").disabled = !connected;
  $("avatar").disabled = state !== "idle";
}

// The browser's own figures: what arrived, at what rate, what was dropped.
async function refreshStats() {
  const pc = live.pc;
  if (!pc) return;
  const report = await pc.getStats();
  const stats = {};
  report.forEach((entry) => {
    if (entry.type !== "inbound-rtp") return;
    if (entry.kind === "video") {
      stats.fps = entry.framesPerSecond || 0;
      stats.framesDecoded = entry.framesDecoded || 0;
      stats.framesReceived = entry.framesReceived || 0;
      stats.framesDropped = entry.framesDropped || 0;
      stats.width = entry.frameWidth || 0;
      stats.height = entry.frameHeight || 0;
      stats.videoBytes = entry.bytesReceived || 0;
    } else if (entry.kind === "audio") {
      stats.audioBytes = entry.bytesReceived || 0;
      stats.audioSamples = entry.totalSamplesReceived || 0;
      stats.audioLevel = entry.audioLevel || 0;
    }
  });
  live.stats = stats;
  $("stat-state").textContent = pc.connectionState;
  $("stat-video").textContent = stats.width ? `${stats.width}×${stats.height}` : "–";
  $("stat-fps").textContent = stats.fps !== undefined ? stats.fps.toFixed(1) : "–";
  $("stat-frames").textContent =
    stats.framesReceived !== undefined ? `${stats.framesReceived} / ${stats.framesDropped}` : "–";
  $("stat-audio").textContent =
    stats.audioBytes !== undefined
      ? `${(stats.audioBytes / 1024).toFixed(0)} KiB, ${stats.audioSamples} samples`
      : "–";
  $("stat-mic").textContent = `${live.micBlocksHeard} blocks of 20 ms`;
}

async function refreshServerView() {
  if (!live.session) return;
  try {
    $("server-session").textContent = JSON.stringify(await api("GET", sessionPath()), null, 2);
  } catch (error) {
    $("server-session").textContent = error.message;
  }
}

function start() {
  const stored = sessionStorage.getItem(KEY_STORE);
  if (stored) $("api-key").value = stored;
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORE, apiKey());
    loadAvatars();
  });
  $("reload").addEventListener("click", loadAvatars);
  $("connect").addEventListener("click", connect);
  $("interrupt").addEventListener("click", interrupt);
  $("disconnect").addEventListener("click", () => disconnect());
  $("speech-form").addEventListener("submit", sendSpeech);
  window.addEventListener("pagehide", () => disconnect(false));
  setButtons("idle");
  setInterval(refreshStats, STATS_EVERY_MS);
  setInterval(refreshServerView, SERVER_VIEW_EVERY_MS);
  loadAvatars();
}

start();
