//! The response cache: answers of models that opt in, kept in the api so that a repeated
//! request skips the worker. An entry is found by a hash of everything that decides an answer
//! (model, version, input names, datatypes, shapes and bytes, the outputs asked for, and the
//! parameters), and returned only when all of that is equal to the request's, so a hash
//! collision costs a miss, never a wrong answer. The cache is bounded in bytes (moka, TinyLFU
//! admission and LRU eviction, weighed by tensor bytes); the version is part of the key, so a
//! new version never sees an older one's answers.

use moka::notification::RemovalCause;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Arc;
use vatic_schema::v2::{BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE};
use vatic_schema::{InferRequest, InferResponse, Parameters, Tensor, TensorData};
use xxhash_rust::xxh3::Xxh3;

/// The request parameter that keeps one request out of the cache: `"cache": false`.
pub const CACHE_PARAMETER: &str = "cache";

/// Parameters that only choose how tensors travel, not what the answer is; left out of the key.
const TRANSPORT: [&str; 4] = [
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    CACHE_PARAMETER,
];

/// Bytes an entry is weighed at beyond its tensors: names, shapes and bookkeeping.
const OVERHEAD: usize = 256;

/// What decides an answer: the part of a request the cache compares.
#[derive(Debug, Clone, PartialEq)]
struct Question {
    model: String,
    version: u64,
    inputs: Vec<Tensor>,
    /// Requested outputs with their parameters, transport ones left out.
    outputs: Vec<(String, Parameters)>,
    parameters: Parameters,
}

struct Entry {
    question: Question,
    answer: InferResponse,
    weight: u32,
}

/// A request's place in the cache, made by [`ResponseCache::key`].
pub struct Key {
    hash: u128,
    question: Question,
}

/// The response cache and its metrics.
pub struct ResponseCache {
    entries: moka::sync::Cache<u128, Arc<Entry>>,
    max_bytes: u64,
    metrics: CacheMetrics,
}

/// Prometheus metrics of the cache (Triton's `nv_cache_*` counterparts).
#[derive(Clone)]
struct CacheMetrics {
    hits: IntCounterVec,
    misses: IntCounterVec,
    bytes: IntGauge,
    entries: IntGauge,
}

impl ResponseCache {
    /// A cache of at most `max_bytes` of entries, its metrics registered in `registry`.
    pub fn new(max_bytes: u64, registry: &Registry) -> prometheus::Result<ResponseCache> {
        let hits = IntCounterVec::new(
            Opts::new(
                "vatic_cache_hits_total",
                "Inference requests answered from the response cache.",
            ),
            &["model", "version"],
        )?;
        let misses = IntCounterVec::new(
            Opts::new(
                "vatic_cache_misses_total",
                "Inference requests of models with the response cache on that it could not answer.",
            ),
            &["model", "version"],
        )?;
        let evictions = IntCounter::new(
            "vatic_cache_evictions_total",
            "Entries the response cache dropped to stay within its size.",
        )?;
        let bytes = IntGauge::new(
            "vatic_cache_bytes",
            "Bytes the response cache's entries are weighed at.",
        )?;
        let entries = IntGauge::new("vatic_cache_entries", "Entries in the response cache.")?;
        for c in [&hits, &misses] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(evictions.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        let evicted = evictions;
        let entries_cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, e: &Arc<Entry>| e.weight)
            .eviction_listener(move |_, _, cause| {
                if matches!(cause, RemovalCause::Size) {
                    evicted.inc();
                }
            })
            .build();
        Ok(ResponseCache {
            entries: entries_cache,
            max_bytes,
            metrics: CacheMetrics {
                hits,
                misses,
                bytes,
                entries,
            },
        })
    }

    /// The key of `request` to `version` of `model`; `None` when the request opts out
    /// (`"cache": false`).
    pub fn key(model: &str, version: u64, request: &InferRequest) -> Option<Key> {
        if request.parameters.get(CACHE_PARAMETER) == Some(&serde_json::Value::Bool(false)) {
            return None;
        }
        let question = Question {
            model: model.to_string(),
            version,
            inputs: request
                .inputs
                .iter()
                .map(|t| Tensor {
                    parameters: decisive(&t.parameters),
                    ..t.clone()
                })
                .collect(),
            outputs: request
                .outputs
                .iter()
                .map(|o| (o.name.clone(), decisive(&o.parameters)))
                .collect(),
            parameters: decisive(&request.parameters),
        };
        Some(Key {
            hash: hash(&question),
            question,
        })
    }

    /// The cached answer to `key`, with the request's `id`; counts a hit or a miss.
    pub fn get(&self, key: &Key, id: Option<&str>) -> Option<InferResponse> {
        let q = &key.question;
        let version = q.version.to_string();
        let found = self
            .entries
            .get(&key.hash)
            .filter(|e| e.question == key.question);
        match found {
            Some(e) => {
                self.metrics
                    .hits
                    .with_label_values(&[&q.model, &version])
                    .inc();
                let mut answer = e.answer.clone();
                answer.id = id.map(str::to_string);
                Some(answer)
            }
            None => {
                self.metrics
                    .misses
                    .with_label_values(&[&q.model, &version])
                    .inc();
                None
            }
        }
    }

    /// Keeps `answer` to `key`. An answer weighing more than the whole cache is not kept.
    pub fn insert(&self, key: Key, answer: &InferResponse) {
        let weight = OVERHEAD
            + key.question.inputs.iter().map(tensor_bytes).sum::<usize>()
            + answer.outputs.iter().map(tensor_bytes).sum::<usize>();
        if weight as u64 > self.max_bytes || weight > u32::MAX as usize {
            return;
        }
        let mut answer = answer.clone();
        answer.id = None;
        self.entries.insert(
            key.hash,
            Arc::new(Entry {
                question: key.question,
                answer,
                weight: weight as u32,
            }),
        );
    }

    /// Brings the size metrics up to date (before a scrape), after finishing the cache's
    /// pending evictions.
    pub fn refresh_metrics(&self) {
        self.entries.run_pending_tasks();
        self.metrics.bytes.set(self.entries.weighted_size() as i64);
        self.metrics.entries.set(self.entries.entry_count() as i64);
    }

    /// Bytes the entries weigh now, after pending evictions.
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// Parameters without the transport ones.
fn decisive(parameters: &Parameters) -> Parameters {
    parameters
        .iter()
        .filter(|(k, _)| !TRANSPORT.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.name.len()
        + t.shape.len() * 8
        + match &t.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(items) => items.iter().map(|b| b.len() + 8).sum(),
        }
}

/// A 128-bit hash of everything the question holds, each part length-prefixed so that no two
/// different questions feed the hasher the same bytes.
fn hash(q: &Question) -> u128 {
    let mut h = Xxh3::new();
    let mut part = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(q.model.as_bytes());
    part(&q.version.to_le_bytes());
    part(&(q.inputs.len() as u64).to_le_bytes());
    for t in &q.inputs {
        part(t.name.as_bytes());
        part(t.datatype.as_str().as_bytes());
        part(&(t.shape.len() as u64).to_le_bytes());
        for d in &t.shape {
            part(&d.to_le_bytes());
        }
        match &t.data {
            TensorData::Fixed(b) => part(b),
            TensorData::Bytes(items) => {
                part(&(items.len() as u64).to_le_bytes());
                for b in items {
                    part(b);
                }
            }
        }
        part(
            serde_json::Value::Object(t.parameters.clone())
                .to_string()
                .as_bytes(),
        );
    }
    part(&(q.outputs.len() as u64).to_le_bytes());
    for (name, parameters) in &q.outputs {
        part(name.as_bytes());
        part(
            serde_json::Value::Object(parameters.clone())
                .to_string()
                .as_bytes(),
        );
    }
    part(
        serde_json::Value::Object(q.parameters.clone())
            .to_string()
            .as_bytes(),
    );
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use vatic_schema::v2::RequestedOutput;
    use vatic_schema::DataType;

    fn cache(max_bytes: u64) -> ResponseCache {
        ResponseCache::new(max_bytes, &Registry::new()).unwrap()
    }

    fn request(values: &[f32], outputs: &[&str]) -> InferRequest {
        InferRequest {
            inputs: vec![Tensor::new(
                "input",
                DataType::Fp32,
                vec![1, values.len() as u64],
                TensorData::from_values(values),
            )
            .unwrap()],
            outputs: outputs
                .iter()
                .map(|name| RequestedOutput {
                    name: name.to_string(),
                    parameters: Parameters::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// An answer that says which request it was made for.
    fn answer(tag: f32) -> InferResponse {
        InferResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: Some("first".into()),
            parameters: Parameters::new(),
            outputs: vec![Tensor::new(
                "out",
                DataType::Fp32,
                vec![1],
                TensorData::from_values(&[tag]),
            )
            .unwrap()],
        }
    }

    #[test]
    fn a_hit_is_the_kept_answer_with_the_new_request_id() {
        let c = cache(1 << 20);
        let req = request(&[1.0, 2.0], &[]);
        let key = ResponseCache::key("m", 1, &req).unwrap();
        assert!(c.get(&key, None).is_none());
        c.insert(key, &answer(7.0));
        let hit = c
            .get(&ResponseCache::key("m", 1, &req).unwrap(), Some("second"))
            .expect("a hit");
        assert_eq!(hit.outputs, answer(7.0).outputs);
        assert_eq!(hit.id.as_deref(), Some("second"));
        let no_id = c
            .get(&ResponseCache::key("m", 1, &req).unwrap(), None)
            .unwrap();
        assert_eq!(no_id.id, None);
    }

    #[test]
    fn another_version_model_input_or_output_selection_misses() {
        let c = cache(1 << 20);
        let req = request(&[1.0, 2.0], &["out"]);
        c.insert(ResponseCache::key("m", 1, &req).unwrap(), &answer(1.0));
        let miss = |model: &str, version: u64, req: &InferRequest| {
            c.get(&ResponseCache::key(model, version, req).unwrap(), None)
                .is_none()
        };
        assert!(!miss("m", 1, &req));
        assert!(
            miss("m", 2, &req),
            "a new version saw an old version's answer"
        );
        assert!(miss("n", 1, &req));
        assert!(miss("m", 1, &request(&[1.0, 2.5], &["out"])));
        assert!(miss("m", 1, &request(&[1.0, 2.0], &[])));
        assert!(miss("m", 1, &request(&[1.0, 2.0], &["out", "other"])));
        let mut with_parameter = req.clone();
        with_parameter
            .parameters
            .insert("threshold".into(), serde_json::json!(0.5));
        assert!(miss("m", 1, &with_parameter));
    }

    #[test]
    fn transport_parameters_share_an_entry_and_cache_false_opts_out() {
        let c = cache(1 << 20);
        let req = request(&[3.0], &["out"]);
        c.insert(ResponseCache::key("m", 1, &req).unwrap(), &answer(3.0));
        let mut binary = req.clone();
        binary
            .parameters
            .insert(BINARY_DATA_OUTPUT.into(), serde_json::json!(true));
        binary.outputs[0]
            .parameters
            .insert(BINARY_DATA.into(), serde_json::json!(true));
        assert!(c
            .get(&ResponseCache::key("m", 1, &binary).unwrap(), None)
            .is_some());
        let mut opted_out = req.clone();
        opted_out
            .parameters
            .insert(CACHE_PARAMETER.into(), serde_json::json!(false));
        assert!(ResponseCache::key("m", 1, &opted_out).is_none());
        opted_out
            .parameters
            .insert(CACHE_PARAMETER.into(), serde_json::json!(true));
        assert!(ResponseCache::key("m", 1, &opted_out).is_some());
    }

    #[test]
    fn an_entry_under_the_same_hash_for_another_question_is_a_miss() {
        let c = cache(1 << 20);
        let a = ResponseCache::key("m", 1, &request(&[1.0], &[])).unwrap();
        let b = ResponseCache::key("m", 1, &request(&[2.0], &[])).unwrap();
        let collided = Key {
            hash: a.hash,
            question: b.question,
        };
        c.insert(a, &answer(1.0));
        assert!(c.get(&collided, None).is_none());
    }

    #[test]
    fn evictions_keep_the_cache_within_its_bytes_and_are_counted() {
        let registry = Registry::new();
        let c = ResponseCache::new(64 * 1024, &registry).unwrap();
        for i in 0..200 {
            let values: Vec<f32> = (0..1000).map(|j| (i * 1000 + j) as f32).collect();
            let req = request(&values, &[]);
            c.insert(ResponseCache::key("m", 1, &req).unwrap(), &answer(i as f32));
        }
        assert!(c.bytes() <= 64 * 1024, "{} bytes", c.bytes());
        c.refresh_metrics();
        let evictions = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "vatic_cache_evictions_total")
            .map(|f| f.get_metric()[0].get_counter().get_value())
            .unwrap();
        assert!(evictions > 0.0, "{evictions}");
        assert!(c.metrics.bytes.get() > 0);
        // An answer larger than the whole cache is not kept at all.
        let huge: Vec<f32> = vec![0.5; 20_000];
        let req = request(&huge, &[]);
        c.insert(ResponseCache::key("m", 1, &req).unwrap(), &answer(0.0));
        assert!(c
            .get(&ResponseCache::key("m", 1, &req).unwrap(), None)
            .is_none());
    }

    /// A request drawn from a small space, so that equal requests come up often.
    fn small_request() -> impl Strategy<Value = (String, u64, InferRequest)> {
        (
            prop::sample::select(vec!["a", "b"]),
            1u64..3,
            prop::collection::vec(0u8..3, 1..4),
            prop::sample::select(vec![vec![], vec!["out"], vec!["out", "other"]]),
            prop::option::of(0u8..2),
        )
            .prop_map(|(model, version, values, outputs, parameter)| {
                let values: Vec<f32> = values.into_iter().map(f32::from).collect();
                let mut req = request(&values, &outputs);
                if let Some(p) = parameter {
                    req.parameters.insert("mode".into(), serde_json::json!(p));
                }
                (model.to_string(), version, req)
            })
    }

    proptest! {
        /// Whatever is inserted and asked in whatever order, a hit is always the answer kept
        /// for an equal request (same model, version, inputs, outputs asked for and
        /// parameters), and the entries stay within the cache's bytes.
        #[test]
        fn a_cached_answer_is_only_ever_returned_for_an_equal_request(
            ops in prop::collection::vec((small_request(), any::<bool>()), 1..120),
            max_bytes in 600u64..4000,
        ) {
            let c = cache(max_bytes);
            let mut kept: HashMap<u128, (Question, f32)> = HashMap::new();
            for (i, ((model, version, req), insert)) in ops.into_iter().enumerate() {
                let key = ResponseCache::key(&model, version, &req).unwrap();
                if insert {
                    kept.insert(key.hash, (key.question.clone(), i as f32));
                    c.insert(key, &answer(i as f32));
                } else if let Some(hit) = c.get(&key, None) {
                    let (question, tag) = kept.get(&key.hash).expect("a hit was inserted");
                    prop_assert_eq!(question, &key.question);
                    prop_assert_eq!(hit.outputs, answer(*tag).outputs);
                }
                prop_assert!(c.bytes() <= max_bytes);
            }
        }
    }
}
