// Offline after the first visit: the wallet's files are cached when the
// worker installs and served from the cache; requests to the hub's API
// always go to the network. The hub appends a line naming its build
// (`self.sonotapBuild`) when it serves this file, so a new build installs
// a new worker with a cache of its own, and the old one's is dropped once
// the new worker takes over (a page never mixes two builds' files).

const cacheName = () => `sonotap-wallet-${self.sonotapBuild ?? "unbuilt"}`;
const FILES = [
  "./",
  "index.html",
  "app.js",
  "store.js",
  "qr.js",
  "style.css",
  "manifest.webmanifest",
  "icon.svg",
  "vendor/qrcode-generator.mjs",
  "sonotap/index.js",
  "sonotap/bytes.js",
  "sonotap/crypto.js",
  "sonotap/ids.js",
  "sonotap/credential.js",
  "sonotap/token.js",
  "sonotap/account.js",
  "sonotap/modem.js",
  "sonotap/dsp.js",
  "sonotap/beacon.js",
  "sonotap/currency.js",
  "listen.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(cacheName())
      .then((cache) => cache.addAll(FILES.map((f) => new Request(f, { cache: "no-cache" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) =>
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== cacheName()).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  ),
);

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || !url.pathname.startsWith(new URL("./", self.location).pathname)) {
    return;
  }
  event.respondWith(
    caches
      .open(cacheName())
      .then((cache) => cache.match(event.request, { ignoreSearch: true }))
      .then((hit) => hit ?? fetch(event.request)),
  );
});
