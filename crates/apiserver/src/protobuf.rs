//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl's generators
//! send them.

use serde_json::Value;

use crate::status::ApiError;

pub fn decode(_bytes: &[u8]) -> Result<Value, ApiError> {
    Err(ApiError::unsupported_media_type("application/vnd.kubernetes.protobuf"))
}
