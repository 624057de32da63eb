//! ChannelData::parse and stream framing on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::stun::channel_data::{self, ChannelData};
use relay::stun::{classify, stream_frame_len, Kind};

fuzz_target!(|data: &[u8]| {
    if let Ok(cd) = ChannelData::parse(data) {
        assert!((channel_data::MIN_CHANNEL..=channel_data::MAX_CHANNEL).contains(&cd.channel));
        assert!(channel_data::HEADER_LEN + cd.data.len() <= data.len());
        assert_eq!(classify(data), Kind::ChannelData);
        let h = channel_data::header(cd.channel, cd.data.len() as u16);
        assert_eq!(&h[..], &data[..4]);
    }

    // Split a stream into frames the way the TCP reader does: every frame
    // must lie within the buffer and make progress.
    let mut rest = data;
    while let Ok(Some(n)) = stream_frame_len(rest) {
        assert!(n > 0 && n <= rest.len());
        if classify(rest) == Kind::ChannelData {
            assert!(ChannelData::parse(&rest[..n]).is_ok());
        }
        rest = &rest[n..];
    }
});
