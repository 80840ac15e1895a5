// A client that behaves like HeyGem's desktop app (Duix.Avatar, src/main/service/video.js):
// axios with default settings (any non-2xx answer throws), POST {base}/easy/submit, then
// GET {base}/easy/query?code=… every 2 s; codes 9999, 10002 and 10003 mean the task failed;
// on data.status 2 the result is data.result joined onto the app's data folder.
//
// Usage: node client.mjs '<json>' with
//   {"base": "http://127.0.0.1:PORT", "dataFolder": "<HeyGem data dir>/temp",
//    "submit": {audio_url, video_url, code, chaofen, watermark_switch, pn}  (or)
//    "queryOnce": "<code>", "maxPolls": 60, "intervalMs": 2000}
// Prints one JSON line: the outcome and the last answer seen. A throw is an outcome too.
import fs from 'node:fs'
import path from 'node:path'
import axios from 'axios'

const FAILED_CODES = [9999, 10002, 10003] // the app's own list
const SUCCESS = 10000
const RUNNING = 1
const DONE = 2
const FAILED = 3

const options = JSON.parse(process.argv[2])
const intervalMs = options.intervalMs ?? 2000
const maxPolls = options.maxPolls ?? 60
const report = { outcome: 'unknown', http_statuses: [], polls: 0 }

function seen(reply) {
  report.http_statuses.push(reply.status)
  report.code = reply.data.code
  report.msg = reply.data.msg
  report.data = reply.data.data
  return reply.data
}

function isMp4(file) {
  // An MP4 starts with a box whose type, bytes 4-8, is "ftyp".
  const head = Buffer.alloc(8)
  const fd = fs.openSync(file, 'r')
  try {
    return fs.readSync(fd, head, 0, 8, 0) === 8 && head.toString('latin1', 4, 8) === 'ftyp'
  } finally {
    fs.closeSync(fd)
  }
}

async function query(code) {
  return seen(await axios.get(`${options.base}/easy/query`, { params: { code } }))
}

async function run() {
  if (options.queryOnce !== undefined) {
    await query(options.queryOnce)
    report.outcome = 'answered'
    return
  }
  const submitted = seen(await axios.post(`${options.base}/easy/submit`, options.submit))
  if (submitted.code !== SUCCESS) {
    report.outcome = 'failed'
    return
  }
  report.submit_msg = submitted.msg
  for (let poll = 0; poll < maxPolls; poll++) {
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
    report.polls = poll + 1
    const answer = await query(options.submit.code)
    if (FAILED_CODES.includes(answer.code)) {
      report.outcome = 'failed'
      return
    }
    if (answer.code !== SUCCESS || answer.data.status === RUNNING) {
      continue // the app keeps polling on anything else
    }
    if (answer.data.status === FAILED) {
      report.outcome = 'failed'
      return
    }
    if (answer.data.status === DONE) {
      const file = path.join(options.dataFolder, answer.data.result)
      report.result_path = file
      report.outcome = fs.existsSync(file) && isMp4(file) ? 'succeeded' : 'result_missing'
      return
    }
  }
  report.outcome = 'timed_out'
}

try {
  await run()
} catch (error) {
  report.outcome = 'threw'
  report.error = String(error.message)
  report.error_status = error.response ? error.response.status : null
}
console.log(JSON.stringify(report))
