//! Validity checks of every HTTP adapter against local servers that answer with the
//! vendors' documented bodies. Each module runs the shared scenarios (`adapter_suite!`) and
//! the vendor's own quirks.

#[macro_use]
mod providers_support;

use keyrotd::model::CheckStatus;
use keyrotd::providers::Credit;
use providers_support::{canary, json_response, Exhausted, Spec};
use serde_json::json;

/// A 403 that is not the vendor's JSON error (a WAF or proxy page) cannot judge a key: no
/// vendor adapter may call the key invalid for it.
#[tokio::test]
async fn a_proxy_403_page_never_marks_a_key_invalid() {
    use wiremock::ResponseTemplate;
    let specs = [
        ("openai", openai::spec()),
        ("openai_compatible", openai_compatible::spec()),
        ("anthropic", anthropic::spec()),
        ("openrouter", openrouter::spec()),
        ("deepseek", deepseek::spec()),
        ("gemini", gemini::spec()),
        ("azure", azure::spec()),
        ("relay", relay::spec()),
        ("simulated", simulated::spec()),
    ];
    for (name, spec) in specs {
        for page in [
            ResponseTemplate::new(403)
                .insert_header("content-type", "text/html")
                .set_body_string("<html><head><title>Attention Required! | Cloudflare</title></head><body>Sorry, you have been blocked</body></html>"),
            json_response(403, &json!({"blocked": true, "ray": "8f1c2a"})),
            ResponseTemplate::new(403),
        ] {
            let report = spec.run(page).await;
            assert_eq!(report.status, CheckStatus::Unreachable, "{name}: {report:?}");
            assert!(
                report.detail.contains("not the provider's JSON error"),
                "{name}: {}",
                report.detail
            );
            assert!(!report.detail.contains("<html"), "{name}: {}", report.detail);
        }
    }
}

mod openai {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"openai\"\nbase_url = \"{base}/v1\"",
            method: "GET",
            path: "/v1/models",
            query: &[],
            auth: ("authorization", "Bearer {key}"),
            headers: &[],
            valid: json!({"object":"list","data":[{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"}]}),
            invalid: (
                401,
                json!({"error":{"message":"Incorrect API key provided: sk-proj-****7f3a. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}),
            ),
            exhausted: Exhausted::Answer(
                429,
                json!({"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}),
            ),
            rate_limited: (
                429,
                json!({"error":{"message":"Rate limit reached for gpt-4o on requests per min (RPM): Limit 500, Used 500.","type":"requests","param":null,"code":"rate_limit_exceeded"}}),
            ),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (
                401,
                json!({"error":{"message":"Incorrect API key provided: {key}.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}),
            ),
            echo_status: CheckStatus::Invalid,
            strict_shape: true,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn detail_names_the_vendor_code_but_not_the_key_hint() {
        let s = spec();
        let report = s.run(json_response(s.invalid.0, &s.invalid.1)).await;
        assert!(
            report
                .detail
                .starts_with("HTTP 401 invalid_api_key invalid_request_error"),
            "{}",
            report.detail
        );
        assert!(!report.detail.contains("****7f3a"), "{}", report.detail);
    }

    #[tokio::test]
    async fn insufficient_quota_with_retry_after_is_still_exhausted() {
        let s = spec();
        let (status, body) = s.exhausted.answer();
        let report = s
            .run(json_response(status, &body).insert_header("retry-after", "20"))
            .await;
        assert_eq!(report.status, CheckStatus::Exhausted);
        assert!(
            report.detail.contains("insufficient_quota"),
            "{}",
            report.detail
        );
    }

    #[tokio::test]
    async fn bare_array_is_not_openai_shape() {
        let s = spec();
        let report = s.run(json_response(200, &json!([{"id":"x"}]))).await;
        assert_eq!(report.status, CheckStatus::Unreachable);
    }

    #[tokio::test]
    async fn a_region_block_is_not_an_invalid_key_and_not_found_is_not_either() {
        let s = spec();
        let report = s.run(json_response(403, &json!({"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}))).await;
        assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
        assert!(
            report.detail.contains("location, not the key"),
            "{}",
            report.detail
        );
        let report = s
            .run(json_response(
                403,
                &json!({"error":{"message":"You are not allowed to sample from this model","type":"invalid_request_error","param":null,"code":null}}),
            ))
            .await;
        assert_eq!(report.status, CheckStatus::Invalid, "{report:?}");
        let report = s
            .run(json_response(
                404,
                &json!({"error":{"message":"not found"}}),
            ))
            .await;
        assert_eq!(report.status, CheckStatus::Unreachable);
    }

    #[tokio::test]
    async fn an_endless_chunked_body_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
            // 64 MiB if nobody stops reading.
            for _ in 0..1024 {
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let config = providers_support::provider_config(&format!(
            "kind = \"openai\"\nbase_url = \"http://{addr}/v1\"\ntimeout = \"5s\""
        ));
        let provider = keyrotd::providers::build(&config, &Default::default()).unwrap();
        let report = provider.check(&canary()).await;
        assert_eq!(report.status, CheckStatus::Unreachable);
        assert!(report.detail.contains("larger than"), "{}", report.detail);
    }
}

mod openai_compatible {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"openai_compatible\"\nbase_url = \"{base}/openai/v1\"",
            path: "/openai/v1/models",
            ..openai::spec()
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn together_bare_array_is_valid() {
        let report = spec()
            .run(json_response(
                200,
                &json!([{"id":"meta-llama/Llama-3-70b-chat-hf","object":"model","type":"chat"}]),
            ))
            .await;
        assert_eq!(report.status, CheckStatus::Valid, "{report:?}");
    }

    #[tokio::test]
    async fn groq_498_capacity_is_transient() {
        let report = spec()
            .run(json_response(
                498,
                &json!({"error":{"message":"Capacity exceeded","type":"capacity_exceeded"}}),
            ))
            .await;
        assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
    }
}

mod anthropic {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"anthropic\"\nbase_url = \"{base}/v1\"",
            method: "GET",
            path: "/v1/models",
            query: &[],
            auth: ("x-api-key", "{key}"),
            headers: &[("anthropic-version", "2023-06-01")],
            valid: json!({"data":[{"type":"model","id":"claude-sonnet-4-20250514","display_name":"Claude Sonnet 4","created_at":"2025-05-22T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-20250514","last_id":"claude-sonnet-4-20250514"}),
            invalid: (
                401,
                json!({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}),
            ),
            exhausted: Exhausted::Answer(
                402,
                json!({"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low to access the Anthropic API."}}),
            ),
            rate_limited: (
                429,
                json!({"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}),
            ),
            // Anthropic's 429 is `rate_limit_error` with or without `retry-after`.
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (
                401,
                json!({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key {key}"}}),
            ),
            echo_status: CheckStatus::Invalid,
            strict_shape: true,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn overloaded_529_is_transient() {
        let report = spec()
            .run(json_response(
                529,
                &json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
            ))
            .await;
        assert_eq!(report.status, CheckStatus::Unreachable);
        assert!(
            report.detail.contains("overloaded_error"),
            "{}",
            report.detail
        );
    }

    #[tokio::test]
    async fn configured_version_header_is_sent() {
        let s = Spec {
            toml:
                "kind = \"anthropic\"\nbase_url = \"{base}/v1\"\nanthropic_version = \"2099-01-01\"",
            headers: &[("anthropic-version", "2099-01-01")],
            ..spec()
        };
        providers_support::valid(&s).await;
    }
}

mod openrouter {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"openrouter\"\nbase_url = \"{base}/api/v1\"",
            method: "GET",
            path: "/api/v1/key",
            query: &[],
            auth: ("authorization", "Bearer {key}"),
            headers: &[],
            valid: json!({"data":{"label":"sk-or-v1-abc...f3a","limit":10,"limit_remaining":7.25,"limit_reset":"monthly","include_byok_in_limit":false,"usage":2.75,"usage_daily":0.5,"usage_weekly":1.0,"usage_monthly":2.75,"is_free_tier":false,"is_provisioning_key":false,"expires_at":"2030-01-01T00:00:00Z"}}),
            invalid: (
                401,
                json!({"error":{"code":401,"message":"User not found."}}),
            ),
            exhausted: Exhausted::Answer(
                402,
                json!({"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/credits","metadata":{"limit_source":"openrouter_credits"}}}),
            ),
            rate_limited: (
                429,
                json!({"error":{"code":429,"message":"Rate limit exceeded"}}),
            ),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (
                401,
                json!({"error":{"code":401,"message":"No auth credentials found for {key}"}}),
            ),
            echo_status: CheckStatus::Invalid,
            strict_shape: true,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn reports_limit_remaining_usage_and_expiry() {
        let report = providers_support::valid(&spec()).await;
        assert_eq!(
            report.credit,
            vec![
                Credit {
                    unit: "usd".into(),
                    remaining: 7.25
                },
                Credit::usage("usd", "daily", 0.5),
                Credit::usage("usd", "weekly", 1.0),
                Credit::usage("usd", "monthly", 2.75),
            ]
        );
        assert_eq!(report.expires_at, Some(1_893_456_000));
    }

    #[tokio::test]
    async fn null_limit_is_unlimited_and_null_expiry_is_none() {
        let body = json!({"data":{"label":"x","limit":null,"limit_remaining":null,"usage":12.0,"is_free_tier":false,"expires_at":null}});
        let report = spec().run(json_response(200, &body)).await;
        assert_eq!(report.status, CheckStatus::Valid);
        assert!(report.credit.is_empty());
        assert_eq!(report.expires_at, None);
    }

    #[tokio::test]
    async fn a_spent_key_limit_is_exhausted() {
        let body = json!({"data":{"label":"x","limit":5,"limit_remaining":0,"usage":5.0,"expires_at":null}});
        let report = spec().run(json_response(200, &body)).await;
        assert_eq!(report.status, CheckStatus::Exhausted);
        assert_eq!(report.credit[0].remaining, 0.0);
    }

    #[tokio::test]
    async fn key_limit_402_is_exhausted() {
        let body = json!({"error":{"code":402,"message":"Key limit exceeded","metadata":{"limit_source":"openrouter_key_limit"}}});
        let report = spec().run(json_response(402, &body)).await;
        assert_eq!(report.status, CheckStatus::Exhausted);
    }

    #[tokio::test]
    async fn unreadable_expiry_is_not_valid() {
        let body = json!({"data":{"label":"x","limit":null,"expires_at":"next tuesday"}});
        let report = spec().run(json_response(200, &body)).await;
        assert_eq!(report.status, CheckStatus::Unreachable);
    }
}

mod deepseek {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"deepseek\"\nbase_url = \"{base}\"",
            method: "GET",
            path: "/user/balance",
            query: &[],
            auth: ("authorization", "Bearer {key}"),
            headers: &[],
            valid: json!({"is_available":true,"balance_infos":[{"currency":"CNY","total_balance":"110.00","granted_balance":"10.00","topped_up_balance":"100.00"},{"currency":"USD","total_balance":"3.50","granted_balance":"0.00","topped_up_balance":"3.50"}]}),
            invalid: (
                401,
                json!({"error":{"message":"Authentication Fails, Your api key: ****7f3a is invalid","type":"authentication_error","param":null,"code":"invalid_request_error"}}),
            ),
            exhausted: Exhausted::Answer(
                402,
                json!({"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}),
            ),
            rate_limited: (
                429,
                json!({"error":{"message":"Rate Limit Reached","type":"rate_limit_error","param":null,"code":"rate_limit_reached"}}),
            ),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (
                401,
                json!({"error":{"message":"Authentication Fails, Your api key: {key} is invalid","type":"authentication_error","param":null,"code":"invalid_request_error"}}),
            ),
            echo_status: CheckStatus::Invalid,
            strict_shape: true,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn string_balances_become_credit_per_currency() {
        let report = providers_support::valid(&spec()).await;
        assert_eq!(
            report.credit,
            vec![
                Credit {
                    unit: "cny".into(),
                    remaining: 110.0
                },
                Credit {
                    unit: "usd".into(),
                    remaining: 3.5
                }
            ]
        );
    }

    #[tokio::test]
    async fn not_available_is_exhausted() {
        let body = json!({"is_available":false,"balance_infos":[{"currency":"CNY","total_balance":"0.00","granted_balance":"0.00","topped_up_balance":"0.00"}]});
        let report = spec().run(json_response(200, &body)).await;
        assert_eq!(report.status, CheckStatus::Exhausted);
        assert_eq!(
            report.credit,
            vec![Credit {
                unit: "cny".into(),
                remaining: 0.0
            }]
        );
    }

    #[tokio::test]
    async fn unparseable_amount_is_not_valid() {
        let body = json!({"is_available":true,"balance_infos":[{"currency":"CNY","total_balance":"lots"}]});
        let report = spec().run(json_response(200, &body)).await;
        assert_eq!(report.status, CheckStatus::Unreachable);
    }
}

mod gemini {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"gemini\"\nbase_url = \"{base}/v1beta\"",
            method: "GET",
            path: "/v1beta/models",
            query: &[],
            auth: ("x-goog-api-key", "{key}"),
            headers: &[],
            valid: json!({"models":[{"name":"models/gemini-2.0-flash","version":"001","displayName":"Gemini 2.0 Flash","inputTokenLimit":1048576}],"nextPageToken":"Cg9tb2RlbHMvZ2VtaW5p"}),
            invalid: (
                400,
                json!({"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}),
            ),
            exhausted: Exhausted::NoSuchAnswer {
                why: "Google documents no out-of-credit answer for the Gemini API: its quotas \
                      are rates (requests per minute, per day) that reset by themselves, and \
                      every one of them answers 429 RESOURCE_EXHAUSTED. The nearest answer, a \
                      spent daily quota with a QuotaFailure detail and a message worded like \
                      OpenAI's insufficient_quota, is a rate limit to wait out, not a key to \
                      top up",
                nearest: (
                    429,
                    json!({"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.","status":"RESOURCE_EXHAUSTED","details":[
                        {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"200"}]},
                        {"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more about Gemini API quotas","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                        {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}),
                ),
                as_status: CheckStatus::RateLimited,
            },
            rate_limited: (
                429,
                json!({"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}),
            ),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (
                400,
                json!({"error":{"code":400,"message":"API key not valid: {key}","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}),
            ),
            echo_status: CheckStatus::Invalid,
            strict_shape: true,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn other_400_says_nothing_about_the_key() {
        let body = json!({"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}});
        let report = spec().run(json_response(400, &body)).await;
        assert_eq!(report.status, CheckStatus::Unreachable);
    }

    #[tokio::test]
    async fn permission_denied_403_is_invalid() {
        let body = json!({"error":{"code":403,"message":"Method doesn't allow unregistered callers.","status":"PERMISSION_DENIED"}});
        let report = spec().run(json_response(403, &body)).await;
        assert_eq!(report.status, CheckStatus::Invalid);
    }
}

mod azure {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"azure_openai\"\nbase_url = \"{base}\"",
            method: "GET",
            path: "/openai/models",
            query: &[("api-version", "2024-10-21")],
            auth: ("api-key", "{key}"),
            headers: &[],
            valid: json!({"data":[{"id":"gpt-4o-2024-05-13","object":"model","created_at":1715558400,"capabilities":{"chat_completion":true},"lifecycle_status":"generally-available"}],"object":"list"}),
            invalid: (
                401,
                json!({"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}),
            ),
            exhausted: Exhausted::Answer(
                402,
                json!({"error":{"code":"402","message":"Payment required"}}),
            ),
            rate_limited: (
                429,
                json!({"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded call rate limit."}}),
            ),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (
                401,
                json!({"error":{"code":"401","message":"Access denied for key {key}"}}),
            ),
            echo_status: CheckStatus::Invalid,
            strict_shape: true,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn configured_api_version_is_sent() {
        let s = Spec {
            toml: "kind = \"azure_openai\"\nbase_url = \"{base}\"\napi_version = \"2025-04-01-preview\"",
            query: &[("api-version", "2025-04-01-preview")],
            ..spec()
        };
        providers_support::valid(&s).await;
    }
}

/// A HolySheep-style relay API: `GET /auth/verify` with Bearer.
mod relay {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"relay\"\nbase_url = \"{base}/v1\"",
            method: "GET",
            path: "/v1/auth/verify",
            query: &[],
            auth: ("authorization", "Bearer {key}"),
            headers: &[],
            valid: json!({"valid":true,"expires_at":1900000000}),
            invalid: (
                401,
                json!({"error":{"code":"token_expired","message":"API key expired"}}),
            ),
            exhausted: Exhausted::Answer(
                402,
                json!({"error":{"code":"insufficient_balance","message":"balance exhausted"}}),
            ),
            rate_limited: (
                429,
                json!({"error":{"code":"rate_limited","message":"slow down"}}),
            ),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (
                401,
                json!({"error":{"code":"token_expired","message":"key {key} expired"}}),
            ),
            echo_status: CheckStatus::Invalid,
            strict_shape: false,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn reports_expiry_from_verify() {
        let report = providers_support::valid(&spec()).await;
        assert_eq!(report.expires_at, Some(1_900_000_000));
    }
}

mod simulated {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            toml: "kind = \"simulated\"\nbase_url = \"{base}\"",
            method: "GET",
            path: "/v1/key",
            query: &[],
            auth: ("authorization", "Bearer {key}"),
            headers: &[],
            valid: json!({"id":"sim_1","name":"keyrotd/demo/1"}),
            invalid: (401, json!({"error":"invalid key"})),
            exhausted: Exhausted::Answer(402, json!({"error":"out of credit"})),
            rate_limited: (429, json!({"error":"rate limited"})),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (401, json!({"error":"invalid key {key}"})),
            echo_status: CheckStatus::Invalid,
            strict_shape: false,
        }
    }
    adapter_suite!(spec());
}

mod http_generic {
    use super::*;

    const TOML: &str = r#"kind = "http"
base_url = "{base}/svc"
[provider.http.check]
path = "/keys/self"
headers = { Authorization = "Token {key}", Accept = "application/json" }
valid_pointer = "/active"
credit_pointer = "/balance/amount"
credit_unit = "EUR"
expires_at_pointer = "/expires"
invalid_status = [401, 403, 410]"#;

    pub fn spec() -> Spec {
        Spec {
            toml: TOML,
            method: "GET",
            path: "/svc/keys/self",
            query: &[],
            auth: ("authorization", "Token {key}"),
            headers: &[("accept", "application/json")],
            valid: json!({"active":true,"balance":{"amount":"12.50"},"expires":"2030-01-01T00:00:00Z"}),
            invalid: (410, json!({"message":"key revoked"})),
            exhausted: Exhausted::Answer(402, json!({"message":"no balance"})),
            rate_limited: (429, json!({"message":"too many requests"})),
            rate_limited_without_retry_after: CheckStatus::RateLimited,
            echo: (403, json!({"detail":"key {key} is not allowed"})),
            echo_status: CheckStatus::Invalid,
            strict_shape: true,
        }
    }
    adapter_suite!(spec());

    #[tokio::test]
    async fn pointers_give_credit_and_expiry() {
        let report = providers_support::valid(&spec()).await;
        assert_eq!(
            report.credit,
            vec![Credit {
                unit: "eur".into(),
                remaining: 12.5
            }]
        );
        assert_eq!(report.expires_at, Some(1_893_456_000));
    }

    #[tokio::test]
    async fn valid_flag_false_is_invalid() {
        let body = json!({"active":false,"balance":{"amount":null},"expires":null});
        let report = spec().run(json_response(200, &body)).await;
        assert_eq!(report.status, CheckStatus::Invalid, "{report:?}");
        assert!(report.credit.is_empty());
    }
}
