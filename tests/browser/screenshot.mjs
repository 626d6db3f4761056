// Opens a ringgate page in headless Chromium (Debian's /usr/bin/chromium) with a bearer
// token, waits for it to load, saves a screenshot and prints the rendered DOM.
// Usage: node screenshot.mjs URL TOKEN OUT.png
import puppeteer from "puppeteer-core";

const [url, token, out] = process.argv.slice(2);
if (!url || !token || !out) {
  console.error("usage: node screenshot.mjs URL TOKEN OUT.png");
  process.exit(64);
}
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 1000 });
  await page.setExtraHTTPHeaders({ Authorization: `Bearer ${token}` });
  const response = await page.goto(url, { waitUntil: "load", timeout: 30000 });
  if (!response || response.status() !== 200) {
    console.error(`status ${response && response.status()}`);
    process.exit(1);
  }
  await page.screenshot({ path: out });
  process.stdout.write(await page.content());
} finally {
  await browser.close();
}
