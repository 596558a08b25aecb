// Offline after the first visit: the wallet's files are cached when the
// worker installs and served from the cache; requests to the hub's API
// always go to the network. The hub appends a build line to this file
// when it serves it, so a new build installs a new worker.

const CACHE = "sonotap-wallet";
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
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(FILES.map((f) => new Request(f, { cache: "no-cache" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || !url.pathname.startsWith(new URL("./", self.location).pathname)) {
    return;
  }
  event.respondWith(
    caches.match(event.request, { ignoreSearch: true }).then((hit) => hit ?? fetch(event.request)),
  );
});
