//! OTLP trace export, configured by the standard OpenTelemetry environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector's OTLP/gRPC address (`http://jaeger:4317`) | unset: traces off, no exporter |
//! | `OTEL_TRACES_SAMPLER` | `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio` | `parentbased_traceidratio` |
//! | `OTEL_TRACES_SAMPLER_ARG` | the ratio of the `*traceidratio` samplers, 0..1 | `1.0` |
//! | `OTEL_SERVICE_NAME` | `service.name` of the traces (and `service` of the logs) | the binary's service name |
//!
//! The batch processor's own variables (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, …)
//! and `OTEL_EXPORTER_OTLP_TIMEOUT` apply as the SDK reads them. Spans are exported in batches by
//! the SDK's background thread through a tonic channel that lives on a small runtime of its own
//! (one thread), so export works from any binary (async or not) and never competes with the
//! service's runtime. Built without the `otlp` feature (on by default) there is no exporter, and
//! setting `OTEL_EXPORTER_OTLP_ENDPOINT` is a start-up error.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
#[cfg(feature = "otlp")]
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
#[cfg(feature = "otlp")]
use opentelemetry_sdk::Resource;

/// The OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP trace exporter (OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}): {reason}")]
pub struct ExporterError {
    /// The endpoint configured (without credentials).
    pub endpoint: String,
    /// What went wrong.
    pub reason: String,
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_TRACES_SAMPLER`.
pub const SAMPLER_VAR: &str = "OTEL_TRACES_SAMPLER";
/// `OTEL_TRACES_SAMPLER_ARG`.
pub const SAMPLER_ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";
/// `OTEL_SERVICE_NAME`.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";

/// How long [`TraceExport::shutdown`] waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// An invalid `OTEL_*` setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct TraceConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Which spans are sampled (recorded and exported).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    /// Every span.
    AlwaysOn,
    /// No span.
    AlwaysOff,
    /// Root spans by this ratio of trace ids (and children whatever their parent says).
    TraceIdRatio(f64),
    /// As the parent says; root spans always.
    ParentBasedAlwaysOn,
    /// As the parent says; root spans never.
    ParentBasedAlwaysOff,
    /// As the parent says; root spans by this ratio of trace ids.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerSetting {
    #[cfg_attr(not(feature = "otlp"), allow(dead_code))]
    fn sampler(self) -> Sampler {
        match self {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            SamplerSetting::ParentBasedAlwaysOn => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
            }
            SamplerSetting::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerSetting::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// Trace export settings, read from the environment once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceExportConfig {
    /// The collector's OTLP/gRPC endpoint; `None` turns traces off.
    pub endpoint: Option<String>,
    /// The sampler.
    pub sampler: SamplerSetting,
    /// `service.name` of the traces and `service` of the JSON logs.
    pub service_name: String,
}

impl TraceExportConfig {
    /// The settings of the process environment; `default_service` names the service unless
    /// `OTEL_SERVICE_NAME` does.
    pub fn from_env(default_service: &str) -> Result<Self, TraceConfigError> {
        Self::from_lookup(default_service, |var| std::env::var(var).ok())
    }

    /// The settings `lookup` gives (a variable's value, `None` when unset); empty values count
    /// as unset.
    pub fn from_lookup(
        default_service: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TraceConfigError> {
        let get = |var: &str| {
            lookup(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let endpoint = match get(ENDPOINT_VAR) {
            Some(endpoint) => Some(check_endpoint(endpoint)?),
            None => None,
        };
        let ratio = match get(SAMPLER_ARG_VAR) {
            Some(arg) => Some(parse_ratio(&arg)?),
            None => None,
        };
        let sampler = match get(SAMPLER_VAR).as_deref() {
            None | Some("parentbased_traceidratio") => {
                SamplerSetting::ParentBasedTraceIdRatio(ratio.unwrap_or(1.0))
            }
            Some("traceidratio") => SamplerSetting::TraceIdRatio(ratio.unwrap_or(1.0)),
            Some("always_on") => SamplerSetting::AlwaysOn,
            Some("always_off") => SamplerSetting::AlwaysOff,
            Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
            Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
            Some(other) => {
                return Err(TraceConfigError {
                    var: SAMPLER_VAR,
                    value: other.to_owned(),
                    reason: "use always_on, always_off, traceidratio, parentbased_always_on, \
                             parentbased_always_off or parentbased_traceidratio"
                        .to_owned(),
                })
            }
        };
        Ok(Self {
            endpoint,
            sampler,
            service_name: get(SERVICE_NAME_VAR).unwrap_or_else(|| default_service.to_owned()),
        })
    }
}

/// `endpoint` if it is an `http://` or `https://` URL with a host.
fn check_endpoint(endpoint: String) -> Result<String, TraceConfigError> {
    let invalid = |reason: &str| TraceConfigError {
        var: ENDPOINT_VAR,
        value: without_credentials(&endpoint),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| invalid("not a URL (use e.g. http://jaeger:4317)"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(invalid(
            "use an http:// URL with a host, e.g. http://jaeger:4317",
        ));
    }
    Ok(endpoint)
}

/// `url` with any user and password (`http://user:secret@host`) replaced by `***`, fit for
/// messages and logs.
pub fn without_credentials(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

/// A sampling ratio in 0..=1.
fn parse_ratio(arg: &str) -> Result<f64, TraceConfigError> {
    match arg.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(TraceConfigError {
            var: SAMPLER_ARG_VAR,
            value: arg.to_owned(),
            reason: "must be a number from 0 to 1".to_owned(),
        }),
    }
}

/// A running exporter: the tracer provider (batch processor) and the runtime of its channel.
pub(crate) struct TraceExport {
    provider: SdkTracerProvider,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for TraceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExport").finish_non_exhaustive()
    }
}

impl TraceExport {
    /// Built without the `otlp` feature, there is no exporter: asking for one is an error.
    #[cfg(not(feature = "otlp"))]
    pub(crate) fn start(
        _config: &TraceExportConfig,
        endpoint: &str,
    ) -> Result<Self, ExporterError> {
        Err(ExporterError {
            endpoint: without_credentials(endpoint),
            reason: "this binary was built without OTLP export (protomesh's `otlp` feature)"
                .to_owned(),
        })
    }

    /// Builds the OTLP/gRPC exporter to `endpoint` and the batching tracer provider.
    #[cfg(feature = "otlp")]
    pub(crate) fn start(config: &TraceExportConfig, endpoint: &str) -> Result<Self, ExporterError> {
        let failed = |reason: String| ExporterError {
            endpoint: without_credentials(endpoint),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|err| failed(format!("cannot start its runtime: {err}")))?;
        // The channel spawns its connection task on the runtime entered here.
        let exporter = {
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|err| failed(err.to_string()))?
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(config.sampler.sampler())
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Self { provider, runtime })
    }

    /// The tracer the `tracing` bridge records with.
    pub(crate) fn tracer(&self) -> SdkTracer {
        self.provider.tracer("protomesh")
    }

    /// Exports what is left (waiting at most a few seconds) and stops.
    pub(crate) fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("trace export: shutdown: {err}");
        }
        self.runtime.shutdown_background();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<TraceExportConfig, TraceConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceExportConfig::from_lookup("tasks", move |var| {
            vars.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn unset_means_off_with_the_default_sampler_and_name() {
        let config = config(&[]).expect("valid");
        assert_eq!(config.endpoint, None);
        assert_eq!(config.sampler, SamplerSetting::ParentBasedTraceIdRatio(1.0));
        assert_eq!(config.service_name, "tasks");
    }

    #[test]
    fn standard_variables_are_read() {
        let config = config(&[
            (ENDPOINT_VAR, "http://jaeger:4317"),
            (SAMPLER_VAR, "traceidratio"),
            (SAMPLER_ARG_VAR, "0.25"),
            (SERVICE_NAME_VAR, "tasks-eu"),
        ])
        .expect("valid");
        assert_eq!(config.endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(config.sampler, SamplerSetting::TraceIdRatio(0.25));
        assert_eq!(config.service_name, "tasks-eu");
        let config = config_with_sampler("parentbased_always_off");
        assert_eq!(config.sampler, SamplerSetting::ParentBasedAlwaysOff);
    }

    fn config_with_sampler(sampler: &str) -> TraceExportConfig {
        config(&[(SAMPLER_VAR, sampler)]).expect("valid")
    }

    #[test]
    fn credentials_in_an_endpoint_are_never_shown() {
        assert_eq!(
            without_credentials("http://user:secret@collector:4317/x"),
            "http://***@collector:4317/x"
        );
        assert_eq!(
            without_credentials("http://jaeger:4317"),
            "http://jaeger:4317"
        );
        let err = config(&[(ENDPOINT_VAR, "ftp://user:secret@collector")]).expect_err("invalid");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, var) in [
            (vec![(ENDPOINT_VAR, "jaeger:4317")], ENDPOINT_VAR),
            (vec![(ENDPOINT_VAR, "not a url")], ENDPOINT_VAR),
            (vec![(SAMPLER_VAR, "sometimes")], SAMPLER_VAR),
            (vec![(SAMPLER_ARG_VAR, "1.5")], SAMPLER_ARG_VAR),
            (vec![(SAMPLER_ARG_VAR, "half")], SAMPLER_ARG_VAR),
        ] {
            let err = config(&vars).expect_err("invalid");
            assert_eq!(err.var, var, "{vars:?}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
