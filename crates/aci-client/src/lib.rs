//! A client of the instances API, for `berth container` and the virtual node: HTTPS trusting
//! one CA, a bearer token, ARM errors decoded into [`ArmError`].

use std::sync::Arc;

use berth_core::aci::{ArmError, ContainerGroup};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as Hyper};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const API_VERSION: &str = "2023-05-01";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Arm(ArmError),
    #[error("calling {url} failed")]
    Transport {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the answer from {url} is not what the API sends: {body}")]
    Decode { url: String, body: String },
}

/// Where a group lives.
#[derive(Debug, Clone)]
pub struct GroupRef {
    pub sub: String,
    pub rg: String,
    pub name: String,
}

impl GroupRef {
    fn path(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerInstance/containerGroups/{}",
            self.sub, self.rg, self.name
        )
    }
}

pub struct Client {
    base: String,
    token: String,
    http: Hyper<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    tls: Arc<rustls::ClientConfig>,
}

/// A response: status, `Azure-AsyncOperation` (if any), JSON body (Null when empty).
pub struct Answer {
    pub status: u16,
    pub operation: Option<String>,
    pub body: Value,
}

impl Client {
    pub fn new(base: &str, token: &str, ca_pem: &str) -> Client {
        let tls = berth_tls::client_config(ca_pem);
        let https = berth_tls::https_connector(&tls);
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: Hyper::builder(TokioExecutor::new()).build(https),
            tls,
        }
    }

    /// Send one request; `path` may carry a query (api-version is added when missing) or be
    /// a whole URL (operation and nextLink URLs).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let mut url = if path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        if !url.contains("api-version=") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("api-version=");
            url.push_str(API_VERSION);
        }
        let transport = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("JSON"))
            .unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| transport(e.into()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| transport(e.into()))?;
        let status = resp.status().as_u16();
        let operation = resp
            .headers()
            .get("azure-asyncoperation")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let raw = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.into()))?
            .to_bytes();
        let body: Value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).map_err(|_| ClientError::Decode {
                url: url.clone(),
                body: String::from_utf8_lossy(&raw).chars().take(300).collect(),
            })?
        };
        if status >= 400 {
            let e = &body["error"];
            return Err(ClientError::Arm(ArmError {
                status,
                code: e["code"].as_str().unwrap_or("Unknown").to_string().into(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
                target: e["target"].as_str().map(String::from),
            }));
        }
        Ok(Answer {
            status,
            operation,
            body,
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, v: Value) -> Result<T, ClientError> {
        serde_json::from_value(v.clone()).map_err(|_| ClientError::Decode {
            url: self.base.clone(),
            body: v.to_string().chars().take(300).collect(),
        })
    }

    /// PUT a group; returns it and the operation URL to follow.
    pub async fn put(
        &self,
        g: &GroupRef,
        group: &ContainerGroup,
    ) -> Result<(ContainerGroup, Option<String>), ClientError> {
        let body = serde_json::to_value(group).expect("JSON");
        let a = self.call("PUT", &g.path(), Some(&body)).await?;
        Ok((self.decode(a.body)?, a.operation))
    }

    /// Poll an operation URL until it ends; `Ok` on Succeeded, the ARM error on Failed.
    /// `progress` sees each InProgress answer.
    pub async fn wait(&self, op: &str, mut progress: impl FnMut()) -> Result<(), ClientError> {
        loop {
            let a = self.call("GET", op, None).await?;
            match a.body["status"].as_str() {
                Some("Succeeded") => return Ok(()),
                Some("Failed") | Some("Canceled") => {
                    let e = &a.body["error"];
                    return Err(ClientError::Arm(ArmError {
                        status: 400,
                        code: e["code"]
                            .as_str()
                            .unwrap_or("DeploymentFailed")
                            .to_string()
                            .into(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                        target: None,
                    }));
                }
                _ => progress(),
            }
        }
    }

    pub async fn get(&self, g: &GroupRef) -> Result<ContainerGroup, ClientError> {
        let a = self.call("GET", &g.path(), None).await?;
        self.decode(a.body)
    }

    /// Every group of a subscription, or of one resource group, following `nextLink`.
    pub async fn list(
        &self,
        sub: &str,
        rg: Option<&str>,
    ) -> Result<Vec<ContainerGroup>, ClientError> {
        let mut next = Some(match rg {
            Some(rg) => format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/containerGroups"),
            None => format!("/subscriptions/{sub}/providers/Microsoft.ContainerInstance/containerGroups"),
        });
        let mut out = Vec::new();
        while let Some(url) = next.take() {
            let a = self.call("GET", &url, None).await?;
            out.extend(self.decode::<Vec<ContainerGroup>>(a.body["value"].clone())?);
            next = a.body["nextLink"].as_str().map(String::from);
        }
        Ok(out)
    }

    /// DELETE; `false` when there was nothing to delete.
    pub async fn delete(&self, g: &GroupRef) -> Result<bool, ClientError> {
        let a = self.call("DELETE", &g.path(), None).await?;
        Ok(a.status != 204)
    }

    /// POST restart, stop or start; returns the operation URL when one follows.
    pub async fn action(&self, g: &GroupRef, action: &str) -> Result<Option<String>, ClientError> {
        let a = self
            .call("POST", &format!("{}/{action}", g.path()), None)
            .await?;
        Ok(a.operation)
    }

    pub async fn logs(
        &self,
        g: &GroupRef,
        container: &str,
        tail: Option<u64>,
        previous: bool,
    ) -> Result<String, ClientError> {
        let mut query = Vec::new();
        if let Some(t) = tail {
            query.push(format!("tail={t}"));
        }
        // Berth's instances service: the run before the current one.
        if previous {
            query.push("previous=true".to_string());
        }
        let mut path = format!("{}/containers/{container}/logs", g.path());
        if !query.is_empty() {
            path.push_str(&format!("?{}", query.join("&")));
        }
        let a = self.call("GET", &path, None).await?;
        Ok(a.body["content"].as_str().unwrap_or_default().to_string())
    }

    /// Each running container's use now, from Azure Monitor's metrics of the group:
    /// container name -> (CPU in millicores, memory in bytes).
    pub async fn metrics(
        &self,
        g: &GroupRef,
    ) -> Result<std::collections::BTreeMap<String, (f64, u64)>, ClientError> {
        let path = format!(
            "{}/providers/Microsoft.Insights/metrics?metricnames=CpuUsage,MemoryUsage\
             &%24filter=containerName%20eq%20%27%2A%27&api-version=2018-01-01",
            g.path()
        );
        let a = self.call("GET", &path, None).await?;
        let mut out = std::collections::BTreeMap::<String, (f64, u64)>::new();
        for metric in a.body["value"].as_array().into_iter().flatten() {
            let cpu = metric["name"]["value"] == "CpuUsage";
            for series in metric["timeseries"].as_array().into_iter().flatten() {
                let container = series["metadatavalues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["name"]["value"] == "containername")
                    .and_then(|m| m["value"].as_str());
                let latest = series["data"]
                    .as_array()
                    .and_then(|d| d.last())
                    .and_then(|p| p["average"].as_f64());
                let (Some(container), Some(v)) = (container, latest) else {
                    continue;
                };
                let entry = out.entry(container.to_string()).or_default();
                if cpu {
                    entry.0 = v;
                } else {
                    entry.1 = v as u64;
                }
            }
        }
        Ok(out)
    }

    /// Open an exec (`Some(command)`) or attach (`None`) socket: the password is sent,
    /// then `input` is relayed in and the output handed to `output` until the socket closes.
    pub async fn connect(
        &self,
        g: &GroupRef,
        container: &str,
        command: Option<&str>,
        input: impl futures::Stream<Item = Vec<u8>> + Send + Unpin + 'static,
        mut output: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let (verb, body) = match command {
            Some(c) => (
                "exec",
                serde_json::json!({"command": c, "terminalSize": {"rows": 24, "cols": 80}}),
            ),
            None => ("attach", Value::Null),
        };
        let a = self
            .call(
                "POST",
                &format!("{}/containers/{container}/{verb}", g.path()),
                Some(&body),
            )
            .await?;
        let uri = a.body["webSocketUri"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let password = a.body["password"].as_str().unwrap_or_default().to_string();
        let transport = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Transport {
            url: uri.clone(),
            source,
        };
        let parsed: http::Uri = uri
            .parse()
            .map_err(|e: http::uri::InvalidUri| transport(e.into()))?;
        let host = parsed.host().unwrap_or("localhost").to_string();
        let port = parsed.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| transport(e.into()))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| transport(e.into()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| transport(e.into()))?;
        let (ws, _) = tokio_tungstenite::client_async(uri.as_str(), tls)
            .await
            .map_err(|e| transport(e.into()))?;
        use tokio_tungstenite::tungstenite::Message;
        let (mut tx, mut rx) = ws.split();
        tx.send(Message::Text(password.into()))
            .await
            .map_err(|e| transport(e.into()))?;
        let pump = tokio::spawn(async move {
            let mut input = input;
            while let Some(bytes) = input.next().await {
                if tx.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
            }
        });
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Text(t)) => output(t.as_bytes()),
                Ok(Message::Binary(b)) => output(&b),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        pump.abort();
        Ok(())
    }

    /// Billed usage (the `meteredUsage` answer) for a subscription, resource group or group.
    pub async fn usage(
        &self,
        sub: &str,
        rg: Option<&str>,
        name: Option<&str>,
        window: &str,
    ) -> Result<Value, ClientError> {
        let path = match (rg, name) {
            (Some(rg), Some(n)) => GroupRef { sub: sub.into(), rg: rg.into(), name: n.into() }.path() + "/meteredUsage",
            (Some(rg), None) => format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerInstance/meteredUsage"),
            _ => format!("/subscriptions/{sub}/providers/Microsoft.ContainerInstance/meteredUsage"),
        };
        let sep = if window.is_empty() { "" } else { "?" };
        Ok(self
            .call("GET", &format!("{path}{sep}{window}"), None)
            .await?
            .body)
    }
}
