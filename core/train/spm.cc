// spm.cc — the C shim over SentencePiece (spm.h). The only C++ in libmoelab:
// every entry point catches whatever the library throws and turns its
// util::Status into a moe_status with the library's message.
#include "spm.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

struct moe_spm {
    sentencepiece::SentencePieceProcessor processor;
};

static moe_status fail_status(const char *op, const char *what, const sentencepiece::util::Status &s)
{
    return moe_fail(MOE_ERR_BACKEND, op, "%s: %s", what, s.ToString().c_str());
}

moe_status moe_spm_load(moe_spm **out, const char *model_path, const char *op)
{
    try {
        moe_spm *spm = new moe_spm;
        auto s = spm->processor.Load(model_path);
        if (!s.ok()) {
            delete spm;
            return moe_fail(MOE_ERR_IO, op, "cannot load the sentencepiece model '%s': %s", model_path,
                            s.ToString().c_str());
        }
        *out = spm;
        return MOE_OK;
    } catch (const std::exception &e) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece model '%s': %s", model_path, e.what());
    } catch (...) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece model '%s': unknown failure", model_path);
    }
}

void moe_spm_free(moe_spm *spm) { delete spm; }

int64_t moe_spm_vocab_size(const moe_spm *spm) { return spm->processor.GetPieceSize(); }

int64_t moe_spm_end_id(const moe_spm *spm)
{
    int eos = spm->processor.eos_id(), bos = spm->processor.bos_id();
    return eos >= 0 ? eos : bos >= 0 ? bos : -1;
}

moe_status moe_spm_encode(const moe_spm *spm, const char *text, size_t len, uint32_t **ids, int64_t *n,
                          const char *op)
{
    try {
        std::vector<int> v;
        auto s = spm->processor.Encode(std::string(text, len), &v);
        if (!s.ok()) return fail_status(op, "sentencepiece encode", s);
        uint32_t *out = static_cast<uint32_t *>(std::malloc((v.size() ? v.size() : 1) * sizeof *out));
        if (!out) return moe_fail(MOE_ERR_NOMEM, op, "out of memory encoding %zu bytes", len);
        for (size_t i = 0; i < v.size(); i++) out[i] = static_cast<uint32_t>(v[i]);
        *ids = out;
        *n = static_cast<int64_t>(v.size());
        return MOE_OK;
    } catch (const std::exception &e) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece encode: %s", e.what());
    } catch (...) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece encode: unknown failure");
    }
}

moe_status moe_spm_decode(const moe_spm *spm, const uint32_t *ids, int64_t n, char **text, size_t *len,
                          const char *op)
{
    try {
        int64_t V = spm->processor.GetPieceSize();
        std::vector<int> v(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; i++) {
            if (ids[i] >= static_cast<uint64_t>(V))
                return moe_fail(MOE_ERR_INDEX, op, "token %u at position %lld is outside the vocabulary (%lld)",
                                static_cast<unsigned>(ids[i]), static_cast<long long>(i),
                                static_cast<long long>(V));
            v[static_cast<size_t>(i)] = static_cast<int>(ids[i]);
        }
        std::string s_out;
        auto s = spm->processor.Decode(v, &s_out);
        if (!s.ok()) return fail_status(op, "sentencepiece decode", s);
        char *out = static_cast<char *>(std::malloc(s_out.size() + 1));
        if (!out) return moe_fail(MOE_ERR_NOMEM, op, "out of memory decoding %lld tokens", static_cast<long long>(n));
        std::memcpy(out, s_out.data(), s_out.size());
        out[s_out.size()] = '\0';
        *text = out;
        *len = s_out.size();
        return MOE_OK;
    } catch (const std::exception &e) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece decode: %s", e.what());
    } catch (...) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece decode: unknown failure");
    }
}

namespace {
// Feeds the trainer from the C callback.
class CallbackSentences : public sentencepiece::SentenceIterator {
  public:
    CallbackSentences(moe_spm_next_sentence next, void *ctx) : next_(next), ctx_(ctx) { Next(); }
    bool done() const override { return done_; }
    void Next() override
    {
        const char *s;
        size_t len;
        done_ = !next_(ctx_, &s, &len);
        if (!done_) value_.assign(s, len);
    }
    const std::string &value() const override { return value_; }
    sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

  private:
    moe_spm_next_sentence next_;
    void *ctx_;
    bool done_ = false;
    std::string value_;
};
} // namespace

moe_status moe_spm_train(const char *model_path, moe_spm_next_sentence next, void *ctx,
                         const char *const *keys, const char *const *values, int n, const char *op)
{
    try {
        std::unordered_map<std::string, std::string> args;
        for (int i = 0; i < n; i++) args[keys[i]] = values[i];
        CallbackSentences sentences(next, ctx);
        std::string model;
        auto s = sentencepiece::SentencePieceTrainer::Train(args, &sentences, &model);
        if (!s.ok()) return fail_status(op, "sentencepiece training", s);
        FILE *f = std::fopen(model_path, "wb");
        if (!f) return moe_fail(MOE_ERR_IO, op, "cannot create '%s': %s", model_path, std::strerror(errno));
        size_t put = std::fwrite(model.data(), 1, model.size(), f);
        if (std::fclose(f) != 0 || put != model.size())
            return moe_fail(MOE_ERR_IO, op, "cannot write '%s'", model_path);
        return MOE_OK;
    } catch (const std::exception &e) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece training: %s", e.what());
    } catch (...) {
        return moe_fail(MOE_ERR_BACKEND, op, "sentencepiece training: unknown failure");
    }
}
