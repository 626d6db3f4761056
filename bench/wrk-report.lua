-- Prints one line of figures wrk's own summary lacks (p99.9), for bench/run.sh and sql.sh.
done = function(summary, latency, requests)
  io.write(string.format("wrk_result rps=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
