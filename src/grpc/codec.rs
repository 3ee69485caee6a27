//! The protobuf codec of the API: prost's, except that a request that does
//! not decode (malformed bytes, or nested deeper than the decoder's
//! recursion limit, e.g. an array parameter a hundred levels deep) is the
//! caller's mistake, INVALID_ARGUMENT naming the request field it was in,
//! not the INTERNAL that gRPC's convention would give it.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Used by the generated clients and servers (see build.rs).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder with its errors answered as bad requests.
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() == tonic::Code::Internal {
                super::status::invalid(crate::domain::ValidationError::single(
                    outermost_field(status.message()),
                    "the request does not decode: it is malformed or nested too deeply",
                ))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The request field a prost decode error happened in: its message lists
/// `Message.field: ` from the innermost to the outermost.
fn outermost_field(message: &str) -> String {
    message
        .split(": ")
        .filter_map(|part| part.split_once('.'))
        .filter(|(m, f)| {
            !m.is_empty()
                && m.chars().all(char::is_alphanumeric)
                && !f.is_empty()
                && f.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|(_, f)| f.to_owned())
        .last()
        .unwrap_or_else(|| "request".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outermost_field_is_named() {
        let message = "failed to decode Protobuf message: Value.kind: Array.values: Value.kind: \
                       ExecuteRequest.params: recursion limit reached";
        assert_eq!(outermost_field(message), "params");
        assert_eq!(
            outermost_field("failed to decode Protobuf message: invalid wire type"),
            "request"
        );
    }
}
