// Debian's Chromium, headless, for the page's end-to-end test and bench:
// no sandbox (tests run as root), and none of the background traffic a
// machine with no network but loopback refuses. `profile`: the user data
// directory, kept between runs as a phone keeps its storage. `microphone`:
// a WAV file the browser's (fake) microphone plays in a loop, with the
// permission to use it granted.
import puppeteer from "puppeteer-core";

export function launch(profile, microphone) {
  const hearing = microphone
    ? [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        `--use-file-for-fake-audio-capture=${microphone}`,
      ]
    : [];
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    userDataDir: profile,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--autoplay-policy=no-user-gesture-required",
      ...hearing,
    ],
  });
}
