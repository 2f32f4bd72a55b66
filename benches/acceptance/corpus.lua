-- wrk script of the acceptance benchmark: sends each pre-signed webhook of a corpus once.
--
--   wrk -t2 -c64 -d10s --latency -s corpus.lua http://127.0.0.1:PORT/webhooks/gong \
--       -- CORPUS_FILE THREADS SYNC_DIR
--
-- CORPUS_FILE: one line per webhook, "Authorization value<TAB>body" (from
-- benches/src/bin/webhook-corpus.rs).
-- THREADS: wrk's -t. SYNC_DIR: an empty directory for the start barrier (below).
--
-- Thread k of THREADS takes lines k, k+THREADS, k+2*THREADS, ...; it starts over only if its share
-- runs out, and done() then says so (wrapped=yes): the servers would see repeats.
--
-- Start barrier: wrk loads thread k's script (init) and starts thread k before it loads thread
-- k+1's, and takes the run's start time only after the last thread is started. A thread that
-- sent while the next one still read the corpus would add requests outside the timed window, so
-- every thread waits in its first request() until all threads have loaded (one file per thread in
-- SYNC_DIR). wrk also calls request() once on thread 0 before starting it, to check the request's
-- shape; that probe consumes nothing and is not counted.
--
-- done() prints one machine-readable line, starting with "ACCEPTANCE"; its client_cpu_s is the CPU
-- wrk used after the corpus was loaded (sending, receiving, latency bookkeeping).

local ffi = require("ffi")
ffi.cdef([[
int usleep(unsigned int usec);
void *malloc(size_t size);
void *memchr(const void *s, int c, size_t n);
typedef struct { long tv_sec; long tv_nsec; } acceptance_timespec;
int clock_gettime(int clock_id, acceptance_timespec *tp);
]])

local function process_cpu_seconds() -- CLOCK_PROCESS_CPUTIME_ID: all of wrk's threads
  local now = ffi.new("acceptance_timespec")
  ffi.C.clock_gettime(2, now)
  return tonumber(now.tv_sec) + tonumber(now.tv_nsec) / 1e9
end

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local function exists(path)
  local file = io.open(path, "r")
  if file then
    file:close()
  end
  return file ~= nil
end

-- The corpus is kept in C memory (the file as read, plus offsets of this thread's lines), not as
-- Lua strings: hundreds of thousands of live strings in wrk's Lua heap make LuaJIT's garbage
-- collector pause wrk for tens of milliseconds, which showed up as latency of the server.
function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  sync_dir = args[3]
  if not (path and nthreads and sync_dir) then
    error("usage: wrk ... -s corpus.lua URL -- CORPUS_FILE THREADS SYNC_DIR")
  end
  total_threads = nthreads
  local file = assert(io.open(path, "rb"))
  local size = file:seek("end")
  file:seek("set")
  local memory = ffi.C.malloc(size) -- lives as long as wrk
  if memory == nil then
    error("cannot allocate " .. size .. " bytes for the corpus")
  end
  data = ffi.cast("uint8_t *", memory)
  local filled = 0
  while true do
    local chunk = file:read(1048576)
    if not chunk then
      break
    end
    ffi.copy(data + filled, chunk, #chunk)
    filled = filled + #chunk
  end
  file:close()
  local lines = 0
  local pos = 0
  while pos < size do
    local newline = ffi.C.memchr(data + pos, 10, size - pos)
    local stop = newline == nil and size or (ffi.cast("uint8_t *", newline) - data)
    lines = lines + 1
    pos = stop + 1
  end
  local mine = math.floor((lines - 1 - id) / nthreads) + 1 -- lines id, id + nthreads, ...
  if mine <= 0 then
    error("corpus " .. path .. " has no line for thread " .. id)
  end
  starts = ffi.new("int64_t[?]", mine)
  tabs = ffi.new("int64_t[?]", mine)
  ends = ffi.new("int64_t[?]", mine)
  local line_no, kept = 0, 0
  pos = 0
  while pos < size do
    local newline = ffi.C.memchr(data + pos, 10, size - pos)
    local stop = newline == nil and size or (ffi.cast("uint8_t *", newline) - data)
    if line_no % nthreads == id then
      local tab = ffi.C.memchr(data + pos, 9, stop - pos)
      if tab == nil then
        error("corpus line " .. line_no .. " has no tab")
      end
      starts[kept], tabs[kept], ends[kept] = pos, ffi.cast("uint8_t *", tab) - data, stop
      kept = kept + 1
    end
    line_no = line_no + 1
    pos = stop + 1
  end
  corpus = lines
  loaded = kept
  next_index = 0 -- requests handed to wrk so far (read by done())
  probed = (id ~= 0) -- only thread 0 is probed
  waiting = true
  headers = { ["Content-Type"] = "application/json" }
  cpu_loaded = process_cpu_seconds() -- wrk's CPU spent before sending (reading the corpus)
  local marker = io.open(sync_dir .. "/loaded-" .. id, "w")
  marker:close()
end

local function wait_for_all_threads()
  for k = 0, total_threads - 1 do
    while not exists(sync_dir .. "/loaded-" .. k) do
      ffi.C.usleep(1000)
    end
  end
  waiting = false
end

function request()
  local index
  if not probed then
    probed = true -- wrk's shape check: build a request, send nothing, consume nothing
    index = 0
  else
    if waiting then
      wait_for_all_threads()
    end
    index = next_index % loaded
    next_index = next_index + 1
  end
  local start, tab = starts[index], tabs[index]
  headers["Authorization"] = ffi.string(data + start, tab - start)
  return wrk.format("POST", nil, headers, ffi.string(data + tab + 1, ends[index] - tab - 1))
end

function done(summary, latency, requests)
  local sent, corpus, wrapped, cpu_loaded = 0, 0, "no", 0
  for _, thread in ipairs(threads) do
    local handed, loaded = thread:get("next_index"), thread:get("loaded")
    cpu_loaded = math.max(cpu_loaded, thread:get("cpu_loaded"))
    sent = sent + handed
    corpus = thread:get("corpus")
    if handed > loaded then
      wrapped = "yes"
    end
  end
  local errors = summary.errors
  io.write(string.format(
    "ACCEPTANCE requests=%d duration_us=%d non2xx=%d connect_errors=%d read_errors=%d "
      .. "write_errors=%d timeouts=%d sent=%d corpus=%d wrapped=%s "
      .. "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d client_cpu_s=%.2f\n",
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, sent, corpus, wrapped,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, process_cpu_seconds() - cpu_loaded))
end
