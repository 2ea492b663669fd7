//! A protobuf codec with small buffers, for services that hold many streams open: tonic-prost's
//! codec starts every call's encode and decode buffers at 8 KiB, and a server stream keeps its
//! encode buffer for as long as it lives (10,000 hub subscribers: about 80 MiB of buffers for
//! events of a few hundred bytes). These start at 1 KiB and grow as a message needs. A service
//! opts in from its `build.rs` with `protomesh_build::Protos::codec_path(
//! "::protomesh::codec::SmallBuffers")`.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of a call.
const BUFFER_SIZE: usize = 1024;
/// Bytes a streaming encoder collects before yielding (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic-prost's codec with [`BUFFER_SIZE`] buffers (see the [module](self)).
#[derive(Debug, Clone, Copy)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
