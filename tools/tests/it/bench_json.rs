//! `shale bench kv` and `shale bench s3` run briefly and print well-formed JSON with the
//! fields scripts rely on. Numbers are not judged.

use crate::procs::shale;

fn check_phase(p: &serde_json::Value) {
    for field in ["name", "ops_per_sec", "mb_per_sec"] {
        assert!(p.get(field).is_some(), "phase lacks {field}: {p}");
    }
    let lat = &p["latency_ms"];
    for q in ["p50", "p99", "p999"] {
        assert!(lat[q].as_f64().is_some(), "latency_ms.{q} missing: {p}");
    }
    assert!(
        p["ops_per_sec"].as_f64().unwrap() > 0.0,
        "the phase did something: {p}"
    );
    let timeline = p["timeline"].as_array().expect("a timeline");
    assert!(!timeline.is_empty(), "{p}");
    for i in timeline {
        for field in ["until_sec", "ops_per_sec", "mb_per_sec", "p50_ms", "p99_ms"] {
            assert!(i[field].as_f64().is_some(), "interval lacks {field}: {p}");
        }
    }
    let ops: f64 = timeline
        .iter()
        .map(|i| i["ops_per_sec"].as_f64().unwrap())
        .sum();
    assert!(ops > 0.0, "the timeline saw the operations: {p}");
}

/// A KV bench short enough for the suite: one second, no warm-up, few clients and keys.
const KV_SHORT: [&str; 8] = [
    "--duration-secs",
    "1",
    "--warmup-secs",
    "0",
    "--concurrency",
    "4",
    "--keys",
    "1000",
];

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = shale()
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run shale bench");
    assert!(
        out.status.success(),
        "shale {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn bench_kv_prints_json_with_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("kv.svg");
    let v = run_json(
        &[
            &["bench", "kv", "--chart", chart.to_str().unwrap(), "--json"][..],
            &KV_SHORT,
        ]
        .concat(),
    );
    let phases = v["phases"].as_array().expect("phases");
    assert!(
        phases
            .iter()
            .any(|p| p["name"].as_str().unwrap().contains("baseline")),
        "{v}"
    );
    phases.iter().for_each(check_phase);
    assert!(v["put_vs_rocksdb"].as_f64().is_some());
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

#[test]
fn bench_kv_ranges_prints_each_range_counts_median_and_costs() {
    let v = run_json(
        &[
            &[
                "bench", "kv", "--json", "--phases", "put", "--ranges", "1,4",
            ][..],
            &KV_SHORT,
        ]
        .concat(),
    );
    let medians = v["range_medians"].as_array().expect("range_medians");
    let counts: Vec<u64> = medians
        .iter()
        .map(|m| m["ranges"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 4], "{v}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for m in medians {
        assert!(m["median_ops_per_sec"].as_f64().unwrap() > 0.0, "{m}");
        let per_put = &m["per_put"];
        for field in ["cpu_us", "log_entries", "raft_messages", "fsyncs"] {
            assert!(
                per_put[field].as_f64().unwrap() > 0.0,
                "per_put.{field}: {m}"
            );
        }
        // The thread groups split the same CPU: store loops did work, and the groups
        // add up to the total.
        let by = &per_put["cpu_us_by_thread"];
        let group = |g: &str| by[g].as_f64().unwrap_or_else(|| panic!("{g}: {m}"));
        assert!(group("store_loops") > 0.0, "{m}");
        let sum: f64 = ["store_loops", "fsync", "rocksdb_background", "other"]
            .into_iter()
            .map(group)
            .sum();
        let cpu_us = per_put["cpu_us"].as_f64().unwrap();
        assert!(
            (sum - cpu_us).abs() <= cpu_us * 0.01 + 1.0,
            "{sum} vs {cpu_us}: {m}"
        );
        // CPU over wall time of the whole process: something, and no more than the
        // machine has (a little slack for the clock reads' order).
        let busy = m["cores_busy"].as_f64().unwrap();
        assert!(busy > 0.0 && busy <= cores * 1.1, "cores_busy {busy}: {m}");
    }
}

/// `shale bench kv --ranges ... --processes`, short, put phases only, plus `args`.
fn run_in_store_processes(args: &[&str]) -> serde_json::Value {
    let fixed = ["bench", "kv", "--json", "--phases", "put", "--processes"];
    run_json(&[&fixed[..], args, &KV_SHORT].concat())
}

#[test]
fn bench_kv_ranges_in_store_processes_spreads_leaders_and_reports_each_store() {
    let v = run_in_store_processes(&["--ranges", "1,6"]);
    let medians = v["range_medians_store_processes"]
        .as_array()
        .expect("range_medians_store_processes");
    let counts: Vec<u64> = medians
        .iter()
        .map(|m| m["ranges"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 6], "{v}");
    for m in medians {
        assert!(m["median_ops_per_sec"].as_f64().unwrap() > 0.0, "{m}");
        for field in ["store_cpu_us", "log_entries", "raft_messages", "fsyncs"] {
            assert!(m[field].as_f64().unwrap() > 0.0, "{field}: {m}");
        }
        let by: Vec<f64> = m["store_cpu_us_by_store"]
            .as_array()
            .expect("by store")
            .iter()
            .map(|c| c.as_f64().unwrap())
            .collect();
        assert_eq!(by.len(), 3, "{m}");
        assert!(by.windows(2).all(|w| w[0] >= w[1]), "busiest first: {m}");
        let total = m["store_cpu_us"].as_f64().unwrap();
        assert!(
            (by.iter().sum::<f64>() - total).abs() <= total * 0.01,
            "{m}"
        );
        assert!(by.iter().all(|&c| c > 0.0), "every store worked: {m}");
    }
    // Leaders spread round-robin in key order: the one range on store 1, the six two to
    // a store.
    let leaders = |i: usize| -> Vec<u64> {
        medians[i]["leaders_by_store"]
            .as_array()
            .expect("leaders_by_store")
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect()
    };
    assert_eq!(leaders(0), vec![1, 0, 0], "{v}");
    assert_eq!(leaders(1), vec![2, 2, 2], "{v}");
}

#[test]
fn bench_kv_ranges_in_store_processes_can_keep_leaders_together() {
    let v = run_in_store_processes(&["--ranges", "4", "--leaders-together"]);
    let m = &v["range_medians_store_processes"][0];
    assert!(m["median_ops_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    let mut leaders: Vec<u64> = m["leaders_by_store"]
        .as_array()
        .expect("leaders_by_store")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    leaders.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(leaders, vec![4, 0, 0], "one store leads every range: {v}");
}

#[test]
fn bench_s3_prints_json() {
    let v = run_json(&[
        "bench",
        "s3",
        "--json",
        "--duration-secs",
        "1",
        "--concurrency",
        "4",
        "--size",
        "16KiB",
        "--list-keys",
        "10",
    ]);
    let phases = v["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 3, "put, get, list: {v}");
    phases.iter().for_each(check_phase);
}

/// Real processes killed with SIGKILL: the run fails if an acknowledged write is lost.
#[test]
fn bench_failover_kills_leaders_and_loses_no_acknowledged_write() {
    let v = run_json(&[
        "bench",
        "failover",
        "--json",
        "--trials",
        "2",
        "--writers",
        "4",
    ]);
    let trials = v["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 2, "{v}");
    for t in trials {
        for field in ["new_leader_ms", "first_write_ms", "all_writers_ms"] {
            assert!(t[field].as_f64().is_some_and(|ms| ms > 0.0), "{field}: {v}");
        }
    }
    for summary in ["new_leader_ms", "first_write_ms", "all_writers_ms"] {
        assert!(v[summary]["p99"].as_f64().is_some(), "{summary}: {v}");
    }
    assert!(v["acknowledged_writes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["lost_writes"].as_u64(), Some(0), "{v}");
}

/// The listing bench fills a bucket and checks every page it times holds a full page.
#[test]
fn bench_list_times_pages_of_a_big_bucket_beside_a_one_page_bucket() {
    let v = run_json(&[
        "bench",
        "list",
        "--json",
        "--objects",
        "3000",
        "--page",
        "100",
        "--requests",
        "5",
    ]);
    assert_eq!(v["objects"].as_u64(), Some(3000), "{v}");
    assert_eq!(v["page_keys"].as_u64(), Some(100), "{v}");
    for phase in ["big_bucket", "one_page_bucket"] {
        assert_eq!(v[phase]["ops"].as_u64(), Some(5), "{phase}: {v}");
        check_phase(&v[phase]);
    }
}

/// `shale bench idle`, with and without a placement node: every replica hibernates before
/// the measurement and the report says which cluster it measured.
#[test]
fn bench_idle_reports_hibernating_ranges_with_and_without_placement() {
    for placement in [false, true] {
        let mut args = vec![
            "bench",
            "idle",
            "--ranges",
            "24",
            "--measure-secs",
            "1",
            "--json",
        ];
        if placement {
            args.push("--placement");
        }
        let rep = run_json(&args);
        assert_eq!(rep["placement"], placement, "{rep}");
        assert_eq!(rep["ranges"], 24, "{rep}");
        let replicas = rep["replicas"].as_u64().unwrap();
        assert!(replicas >= 24 * 3, "three replicas of each range: {rep}");
        assert!(
            rep["hibernating_replicas"].as_u64().unwrap() * 100 >= replicas * 99,
            "the ranges went idle: {rep}"
        );
        assert!(rep["rss_bytes"].as_u64().unwrap() > 0, "{rep}");
        // With placement the measurement waits for its leader moves to end.
        let in_flight = rep["operators_in_flight"].as_u64();
        assert_eq!(in_flight, placement.then_some(0), "{rep}");
    }
}
