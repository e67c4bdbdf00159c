// Segment's browser library (@segment/analytics-next) in headless Chromium, driven by
// playwright-core, against `stipple serve`, with no network beyond 127.0.0.1.
//
// Run by `cargo xtask e2e`:
//   node browser_client.mjs INGRESS_URL WRITE_KEY PREFIX CHROMIUM USER_DATA_DIR
//
// A tiny static server on 127.0.0.1 (another origin than the ingress, so CORS is
// exercised) serves a page and analytics-next's UMD build. The page loads it with
// cdnSettings that point Segment.io at the ingress, so nothing is fetched from Segment's
// CDN, then makes identify, track, page, group and alias calls, each with its own
// messageId, first in the default mode (one request per call to /v1/i, /v1/t, ...,
// text/plain) and then in batching mode (/v1/b). It prints one JSON report on stdout:
// every call with the event the library built and whether failedDelivery() was set,
// and every request the page tried outside 127.0.0.1 (blocked).
import { createServer } from 'node:http'
import { readFile } from 'node:fs/promises'
import { dirname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const [ingressUrl, writeKey, prefix, executablePath, userDataDir] = process.argv.slice(2)
const here = dirname(fileURLToPath(import.meta.url))
const umd = join(here, 'node_modules', '@segment', 'analytics-next', 'dist', 'umd')
const report = { client: 'analytics-next', calls: [], errors: [], blockedRequests: [], consoleErrors: [], ingressRequests: [] }

// The static server: the page, and analytics-next's dist/umd (index.js and its chunks).
const server = createServer(async (req, res) => {
  try {
    const path = new URL(req.url, 'http://x').pathname
    let file
    if (path === '/' || path === '/index.html') file = join(here, 'browser_page.html')
    else if (path.startsWith('/analytics-next/')) file = join(umd, normalize(path.slice('/analytics-next/'.length)).replace(/^(\.\.[/\\])+/, ''))
    if (!file) { res.writeHead(404).end(); return }
    const body = await readFile(file)
    const type = file.endsWith('.html') ? 'text/html' : 'application/javascript'
    res.writeHead(200, { 'Content-Type': type }).end(body)
  } catch (e) {
    res.writeHead(404).end(String(e))
  }
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
const pageUrl = `http://127.0.0.1:${server.address().port}/`
const apiHost = `${new URL(ingressUrl).host}/v1`

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
try {
  // Nothing may leave 127.0.0.1: anything else is blocked and reported.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url())
    if (url.hostname === '127.0.0.1') return route.continue()
    report.blockedRequests.push(route.request().url())
    return route.abort()
  })
  // What the library posted to the ingress: path and content type.
  context.on('request', (req) => {
    if (req.url().startsWith(ingressUrl)) {
      report.ingressRequests.push({ method: req.method(), path: new URL(req.url()).pathname, contentType: req.headers()['content-type'] })
    }
  })
  for (const mode of ['default', 'batching']) {
    const page = await context.newPage()
    page.on('console', (m) => { if (m.type() === 'error') report.consoleErrors.push(`${mode}: ${m.text()}`) })
    page.on('pageerror', (e) => report.errors.push(`${mode}: page error: ${e.message}`))
    await page.goto(pageUrl)
    const calls = await page.evaluate(async ({ writeKey, apiHost, prefix, mode }) => {
      const segmentio = { apiKey: writeKey, apiHost, protocol: 'http' }
      if (mode === 'batching') segmentio.deliveryStrategy = { strategy: 'batching', config: { size: 5, timeout: 300 } }
      const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load({
        writeKey,
        cdnSettings: { integrations: { 'Segment.io': segmentio } },
      })
      const user = `${prefix}-${mode}-user`
      const mid = (kind) => ({ messageId: `${prefix}-${mode}-${kind}` })
      const out = []
      const record = (ctx) => out.push({ ok: !ctx.failedDelivery(), failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : undefined, message: JSON.parse(JSON.stringify(ctx.event)) })
      record(await analytics.identify(user, { email: 'web@example.com', plan: 'free', visits: 2, beta: true }, mid('identify')))
      record(await analytics.track('Browser Click', { button: 'buy', price: 3.5 }, mid('track')))
      record(await analytics.page('Docs', 'Browser Page', { section: 'intro' }, mid('page')))
      record(await analytics.group(`${prefix}-${mode}-group`, { name: 'WebCo', seats: 3 }, mid('group')))
      record(await analytics.alias(`${user}-new`, user, mid('alias')))
      return out
    }, { writeKey, apiHost, prefix, mode })
    for (const c of calls) report.calls.push({ mode, ...c })
    // Batching mode sends on a timer: give it time before the page goes away.
    if (mode === 'batching') await page.waitForTimeout(1500)
    await page.close()
  }
} catch (e) {
  report.errors.push(`driver: ${e?.stack ?? e}`)
} finally {
  await context.close().catch(() => {})
  server.close()
}
console.log(JSON.stringify(report))
