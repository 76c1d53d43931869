//! The compose file handed to the compose tool: each service's image
//! replaced by the ID the boot verified, `pull_policy` dropped, and the
//! CVM's [`ServiceLimits`] on every service.

use super::ComposeFile;
use serde_yaml_ng::{Mapping, Value};

impl ComposeFile {
    /// The compose file to run, with each service's image replaced by what
    /// the engine knows it as (`replacements`: service → local name), so the
    /// compose tool finds every image locally and never pulls. Merge keys
    /// are already resolved: compose runs exactly what was checked.
    pub fn render(&self, replacements: &[(String, String)]) -> String {
        serde_yaml_ng::to_string(&self.rendered(replacements))
            .expect("a parsed document serializes")
    }

    /// [`render`](Self::render), with the CVM's `limits` on every service:
    /// `cpus` and `mem_limit` (and the `deploy.resources.limits` the
    /// tenant wrote) are set to the platform's value, or kept where the
    /// tenant's own is smaller; reservations above the limit are lowered
    /// to it, and `cpu_quota`/`cpu_period` (which the engine refuses next
    /// to `cpus`) are dropped.
    pub fn render_with_limits(
        &self,
        replacements: &[(String, String)],
        limits: &ServiceLimits,
    ) -> String {
        let mut doc = self.rendered(replacements);
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (_, svc) in services.iter_mut() {
                if let Some(svc) = svc.as_mapping_mut() {
                    limit_service(svc, limits);
                }
            }
        }
        serde_yaml_ng::to_string(&doc).expect("a parsed document serializes")
    }

    /// The document with the images replaced and `pull_policy` dropped.
    fn rendered(&self, replacements: &[(String, String)]) -> Value {
        let mut doc = self.doc.clone();
        if let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) {
            for (service, image) in replacements {
                if let Some(svc) = services
                    .get_mut(service.as_str())
                    .and_then(Value::as_mapping_mut)
                {
                    svc.insert(Value::from("image"), Value::from(image.as_str()));
                    // Never pull, whatever the file asked for.
                    svc.remove("pull_policy");
                }
            }
        }
        doc
    }
}

/// The resources each container of a CVM may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceLimits {
    /// CPUs in thousandths (1000 = one CPU).
    pub cpu_millis: Option<u64>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
}

fn limit_service(svc: &mut Mapping, limits: &ServiceLimits) {
    let deploy_limits = |svc: &Mapping, key: &str| {
        svc.get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("limits"))
            .and_then(|l| l.get(key))
            .cloned()
    };
    if let Some(max) = limits.cpu_millis {
        let tenant = [svc.get("cpus").cloned(), deploy_limits(svc, "cpus")]
            .into_iter()
            .flatten()
            .filter_map(|v| cpu_millis_of(&v))
            .min();
        let millis = tenant.map_or(max, |t| t.min(max)).max(1);
        let cpus = Value::from(millis as f64 / 1000.0);
        svc.insert(Value::from("cpus"), cpus.clone());
        svc.remove("cpu_quota");
        svc.remove("cpu_period");
        if let Some(l) = resources_mut(svc, "limits") {
            l.insert(Value::from("cpus"), Value::from(cpus_text(millis)));
        }
    }
    if let Some(max) = limits.memory_bytes {
        let tenant = [svc.get("mem_limit").cloned(), deploy_limits(svc, "memory")]
            .into_iter()
            .flatten()
            .filter_map(|v| bytes_of(&v))
            .min();
        let bytes = tenant.map_or(max, |t| t.min(max));
        svc.insert(Value::from("mem_limit"), Value::from(bytes));
        if let Some(l) = resources_mut(svc, "limits") {
            l.insert(Value::from("memory"), Value::from(bytes));
        }
        // A reservation above the limit, or a swap limit below it, makes
        // the engine refuse the container.
        if svc
            .get("mem_reservation")
            .is_some_and(|v| bytes_of(v).is_none_or(|r| r > bytes))
        {
            svc.insert(Value::from("mem_reservation"), Value::from(bytes));
        }
        if let Some(r) = resources_mut(svc, "reservations")
            && r.get("memory")
                .is_some_and(|v| bytes_of(v).is_none_or(|m| m > bytes))
        {
            r.insert(Value::from("memory"), Value::from(bytes));
        }
        if svc.get("memswap_limit").is_some_and(|v| {
            !matches!(v.as_i64(), Some(-1)) && bytes_of(v).is_none_or(|s| s < bytes)
        }) {
            svc.insert(Value::from("memswap_limit"), Value::from(bytes));
        }
    }
}

/// `deploy.resources.<which>`, if the tenant wrote it as a mapping.
fn resources_mut<'a>(svc: &'a mut Mapping, which: &str) -> Option<&'a mut Mapping> {
    svc.get_mut("deploy")?
        .get_mut("resources")?
        .get_mut(which)?
        .as_mapping_mut()
}

fn cpus_text(millis: u64) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// `cpus: 1.5` or `cpus: "0.5"` in thousandths; `None` when not a number
/// (an interpolation, say: the platform's value replaces it).
fn cpu_millis_of(v: &Value) -> Option<u64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (f.is_finite() && f > 0.0).then(|| (f * 1000.0).round() as u64)
}

/// A compose byte value (`1g`, `512m`, `300kb`, `1048576`) in bytes.
fn bytes_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let t = s.trim().to_ascii_lowercase();
            let t = t.strip_suffix('b').unwrap_or(&t);
            let (num, mult) = match t.chars().last()? {
                'k' => (&t[..t.len() - 1], 1u64 << 10),
                'm' => (&t[..t.len() - 1], 1 << 20),
                'g' => (&t[..t.len() - 1], 1 << 30),
                't' => (&t[..t.len() - 1], 1 << 40),
                _ => (t, 1),
            };
            let f: f64 = num.trim().parse().ok()?;
            (f.is_finite() && f >= 0.0).then_some((f * mult as f64) as u64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn service(rendered: &str, name: &str) -> Mapping {
        let doc: Value = serde_yaml_ng::from_str(rendered).unwrap();
        doc["services"][name].as_mapping().unwrap().clone()
    }

    #[test]
    fn limits_are_set_lowered_and_kept_when_smaller() {
        let c = ComposeFile::parse_and_check(
            "services:\n  plain:\n    image: alice/web:1\n  greedy:\n    image: alice/web:1\n    cpus: 8\n    mem_limit: 100g\n    cpu_quota: 800000\n    mem_reservation: 50g\n    deploy:\n      resources:\n        limits: {cpus: '6', memory: 90G}\n  modest:\n    image: alice/web:1\n    cpus: \"0.25\"\n    mem_limit: 64m\n  interpolated:\n    image: alice/web:1\n    mem_limit: ${MEM}\n",
        )
        .unwrap();
        let limits = ServiceLimits {
            cpu_millis: Some(1000),
            memory_bytes: Some(2048 << 20),
        };
        let out = c.render_with_limits(&[], &limits);
        let plain = service(&out, "plain");
        assert_eq!(plain["cpus"].as_f64(), Some(1.0));
        assert_eq!(plain["mem_limit"].as_u64(), Some(2048 << 20));
        let greedy = service(&out, "greedy");
        assert_eq!(greedy["cpus"].as_f64(), Some(1.0));
        assert_eq!(greedy["mem_limit"].as_u64(), Some(2048 << 20));
        assert_eq!(greedy["mem_reservation"].as_u64(), Some(2048 << 20));
        assert!(greedy.get("cpu_quota").is_none());
        let dl = &greedy["deploy"]["resources"]["limits"];
        assert_eq!(dl["cpus"].as_str(), Some("1.000"));
        assert_eq!(dl["memory"].as_u64(), Some(2048 << 20));
        let modest = service(&out, "modest");
        assert_eq!(modest["cpus"].as_f64(), Some(0.25));
        assert_eq!(modest["mem_limit"].as_u64(), Some(64 << 20));
        let interp = service(&out, "interpolated");
        assert_eq!(interp["mem_limit"].as_u64(), Some(2048 << 20));
        // No limits: the plain rendering.
        assert_eq!(
            c.render_with_limits(&[], &ServiceLimits::default()),
            c.render(&[])
        );
    }

    #[test]
    fn compose_byte_values() {
        for (text, bytes) in [
            ("1g", 1u64 << 30),
            ("512M", 512 << 20),
            ("300kb", 300 << 10),
            ("1048576", 1 << 20),
            ("1.5g", 3 << 29),
        ] {
            assert_eq!(bytes_of(&Value::from(text)), Some(bytes), "{text}");
        }
        assert_eq!(bytes_of(&Value::from("${X}")), None);
        assert_eq!(cpu_millis_of(&Value::from(1.5)), Some(1500));
        assert_eq!(cpu_millis_of(&Value::from("abc")), None);
    }
}
